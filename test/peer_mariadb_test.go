package test

// The mysql mapping through the built willi against a real MariaDB (Debian
// mariadb-server, a private server from test/mariadb): willi under
// systemd-socket-activate with the chain [mysql, static], Postfix's
// smtp-sink as the upstreams (one sink per route, so each test sees which
// server got a message), `willi check` and `willi lookup` run as commands.

import (
	"willi/internal/smtptest"
	"willi/test/mariadb"

	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// pmRoot opens a root connection to db over its unix socket; the caller
// closes it.
func pmRoot(t testing.TB, db *mariadb.DB) *sql.DB {
	t.Helper()
	root, err := sql.Open("mysql", "root@unix("+db.Socket+")/mail")
	if err != nil {
		t.Fatal(err)
	}
	root.SetMaxOpenConns(1)
	return root
}

var pmTableSeq atomic.Int64

// pmRoutesTable creates a fresh routing table in db's database "mail" (the
// README's schema), loads rows (pattern, server) and returns its name.
// Each test gets its own table, so tests sharing one server do not meet.
func pmRoutesTable(t testing.TB, db *mariadb.DB, rows [][2]string) string {
	t.Helper()
	root := pmRoot(t, db)
	defer root.Close()
	name := fmt.Sprintf("peer_routes_%d_%d", os.Getpid(), pmTableSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := root.ExecContext(ctx, "CREATE TABLE "+name+` (
		pattern VARCHAR(320) NOT NULL,
		server  VARCHAR(255) NOT NULL,
		PRIMARY KEY (pattern)
	) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_general_ci`); err != nil {
		t.Fatalf("creating %s: %v", name, err)
	}
	for _, r := range rows {
		if _, err := root.ExecContext(ctx, "INSERT INTO "+name+" (pattern, server) VALUES (?, ?)", r[0], r[1]); err != nil {
			t.Fatalf("inserting %q into %s: %v", r, name, err)
		}
	}
	t.Cleanup(func() {
		if _, err := os.Stat(db.Socket); err != nil {
			return // the test stopped the server
		}
		root := pmRoot(t, db)
		defer root.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		root.ExecContext(ctx, "DROP TABLE IF EXISTS "+name)
	})
	return name
}

// pmConfig is a config whose chain is [mysql (dsn, query), static (def)].
func pmConfig(dsn, query, def string) string {
	return fmt.Sprintf(`hostname = "willi.test"
log_level = "debug"
recipient_delimiter = "+"
command_timeout = "60s"
upstream_connect_timeout = "5s"

[[mapping]]
type = "mysql"
dsn = %q
query = %q

[[mapping]]
type = "static"
server = %q
`, dsn, query, def)
}

// pmSink is one smtp-sink upstream.
type pmSink struct {
	Name    string
	Addr    string
	DumpDir string
}

func pmStartSink(t testing.TB, name string) pmSink {
	t.Helper()
	addr, dir := startSMTPSink(t)
	return pmSink{Name: name, Addr: addr, DumpDir: dir}
}

// count is how many transactions the sink has recorded so far.
func (s pmSink) count() int {
	f, _ := filepath.Glob(filepath.Join(s.DumpDir, "msg.*"))
	return len(f)
}

// pmExpectCounts checks, after a short settle time for late deliveries, that
// each sink holds exactly the given number of messages.
func pmExpectCounts(t testing.TB, want map[pmSink]int) {
	t.Helper()
	for s, n := range want {
		if n > 0 {
			readSinkMessages(t, s.DumpDir, n, 20*time.Second)
		}
	}
	time.Sleep(500 * time.Millisecond)
	for s, n := range want {
		if got := s.count(); got != n {
			t.Errorf("sink %s (%s) holds %d messages, want %d", s.Name, s.Addr, got, n)
		}
	}
}

// pmSinkHas waits for a message with token in its body at sink s.
func pmSinkHas(t testing.TB, s pmSink, token string) sinkMessage {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if n := s.count(); n > 0 {
			for _, m := range readSinkMessages(t, s.DumpDir, n, 20*time.Second) {
				if strings.Contains(string(m.Data), token) {
					return m
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no message with %q reached sink %s (%s)", token, s.Name, s.Addr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// pmResult is what one client session saw.
type pmResult struct {
	Banner smtptest.Reply
	Rcpt   []smtptest.Reply
	Data   *smtptest.Reply // the reply to the end of data; nil when DATA was not sent
}

// pmSession connects to addr from 127.0.0.2 and sends one message (Subject
// and body carry token) to rcpts; DATA only when a recipient was accepted.
func pmSession(t testing.TB, addr string, rcpts []string, token string) pmResult {
	t.Helper()
	c := dialSMTP(t, addr, "127.0.0.2")
	var res pmResult
	res.Banner = c.Expect(220)
	if rep := c.Cmd("EHLO client.example"); rep.Code != 250 {
		t.Fatalf("EHLO: %q", rep.Lines)
	}
	if rep := c.Cmd("MAIL FROM:<sender@sender.test>"); rep.Code != 250 {
		t.Fatalf("MAIL: %q", rep.Lines)
	}
	accepted := false
	for _, r := range rcpts {
		rep := c.Cmd("RCPT TO:<" + r + ">")
		res.Rcpt = append(res.Rcpt, rep)
		accepted = accepted || rep.Code == 250
	}
	if accepted {
		rep := c.Data([]byte("Subject: " + token + "\r\n\r\nbody " + token + "\r\n"))
		res.Data = &rep
	}
	if rep := c.Cmd("QUIT"); rep.Code != 221 {
		t.Errorf("QUIT: %q", rep.Lines)
	}
	return res
}

// pmWilliCommand runs `willi args...` and returns its output and exit status.
func pmWilliCommand(t testing.TB, bin string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		}
		t.Fatalf("willi %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), 0
}

// pmNoPassword fails when text shows the database password.
func pmNoPassword(t testing.TB, what, text string) {
	t.Helper()
	if strings.Contains(text, mariadb.Password) {
		t.Errorf("%s shows the database password:\n%s", what, text)
	}
}

// TestPeerMariaDBRouting: routing by address (with and without the
// delimiter suffix), by domain and by parent domain from a MariaDB table;
// a key with no row, or an empty server, falls through to the static
// mapping after it. Each route has its own smtp-sink.
func TestPeerMariaDBRouting(t *testing.T) {
	needRoot(t)
	bin := buildWilli(t)
	db := mariadb.Shared(t)
	addrSink := pmStartSink(t, "address")
	domSink := pmStartSink(t, "domain")
	defSink := pmStartSink(t, "static")
	table := pmRoutesTable(t, db, [][2]string{
		{"alice@example.com", addrSink.Addr},
		{"example.com", domSink.Addr},
		{".example.net", addrSink.Addr},
		{"empty.example", ""},
	})
	cfg := writeConfig(t, t.TempDir(), pmConfig(db.DSN(""),
		"SELECT server FROM "+table+" WHERE pattern = ?", defSink.Addr))
	w := startWilliActivated(t, bin, cfg, williLaunchOpts{})

	cases := []struct {
		name, rcpt string
		sink       pmSink
	}{
		{"address", "alice@example.com", addrSink},
		{"address_case", "ALICE@Example.COM", addrSink},
		{"address_delimiter", "alice+news@example.com", addrSink},
		{"domain", "bob@example.com", domSink},
		{"parent_domain", "carol@mx.example.net", addrSink},
		{"no_row", "dave@nowhere.test", defSink},
		{"no_row_parent_itself", "erin@example.net", defSink}, // .example.net is not example.net
		{"empty_server", "frank@empty.example", defSink},
	}
	want := map[pmSink]int{}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			token := fmt.Sprintf("mariadb-route-%d-%s", i, tc.name)
			res := pmSession(t, w.Addr, []string{tc.rcpt}, token)
			if len(res.Rcpt) != 1 || res.Rcpt[0].Code != 250 {
				t.Fatalf("RCPT %s: %q, want 250", tc.rcpt, res.Rcpt)
			}
			if res.Data == nil || res.Data.Code != 250 || res.Data.Last() != "2.0.0 Ok" {
				t.Fatalf("end of data: %+v, want smtp-sink's 250 2.0.0 Ok", res.Data)
			}
			m := pmSinkHas(t, tc.sink, token)
			if len(m.RcptArgs) != 1 || !strings.EqualFold(m.RcptArgs[0], "<"+tc.rcpt+">") {
				t.Errorf("sink %s got RCPT %q, want <%s>", tc.sink.Name, m.RcptArgs, tc.rcpt)
			}
		})
		want[tc.sink]++
	}
	// Every message at its own sink and nowhere else.
	pmExpectCounts(t, want)
	pmNoPassword(t, "willi's log", tailFile(w.StderrPath, 1<<20))
}

// TestPeerMariaDBStopped: the database dies while a session is open. The
// next recipients, in that session and in new ones, get 451 4.3.0; nothing
// falls through to the static mapping after the mysql one, and nothing is
// delivered anywhere.
func TestPeerMariaDBStopped(t *testing.T) {
	needRoot(t)
	bin := buildWilli(t)
	db := mariadb.Own(t)
	addrSink := pmStartSink(t, "address")
	domSink := pmStartSink(t, "domain")
	defSink := pmStartSink(t, "static")
	table := pmRoutesTable(t, db, [][2]string{
		{"alice@example.com", addrSink.Addr},
		{"example.com", domSink.Addr},
	})
	cfg := writeConfig(t, t.TempDir(), pmConfig(db.DSN(""),
		"SELECT server FROM "+table+" WHERE pattern = ?", defSink.Addr))
	w := startWilliActivated(t, bin, cfg, williLaunchOpts{})

	// One session: a message routed through the live database, then the
	// database stops, then a second transaction in the same session.
	c := dialSMTP(t, w.Addr, "127.0.0.2")
	c.Expect(220)
	c.Cmd("EHLO client.example")
	c.Cmd("MAIL FROM:<sender@sender.test>")
	if rep := c.Cmd("RCPT TO:<alice@example.com>"); rep.Code != 250 {
		t.Fatalf("RCPT before the database stopped: %q", rep.Lines)
	}
	if rep := c.Data([]byte("Subject: before\r\n\r\nbefore the stop\r\n")); rep.Code != 250 {
		t.Fatalf("end of data before the database stopped: %q", rep.Lines)
	}
	pmSinkHas(t, addrSink, "before the stop")

	db.Stop()

	if rep := c.Cmd("MAIL FROM:<sender@sender.test>"); rep.Code != 250 {
		t.Fatalf("MAIL after the database stopped: %q", rep.Lines)
	}
	for _, rcpt := range []string{"alice@example.com", "bob@example.com", "zoe@nowhere.test"} {
		rep := c.Cmd("RCPT TO:<" + rcpt + ">")
		if rep.Code != 451 || !strings.HasPrefix(rep.Last(), "4.3.0") {
			t.Errorf("RCPT %s in the open session after the database stopped: %q, want 451 4.3.0", rcpt, rep.Lines)
		}
	}
	if rep := c.Cmd("DATA"); rep.Code/100 == 3 {
		t.Errorf("DATA accepted with no valid recipient: %q", rep.Lines)
		c.Data(nil)
	}
	c.Cmd("QUIT")

	// A new session (a new willi process, a fresh connection attempt).
	res := pmSession(t, w.Addr, []string{"alice@example.com", "carol@example.com", "yves@nowhere.test"}, "after the stop")
	for i, rep := range res.Rcpt {
		if rep.Code != 451 || !strings.HasPrefix(rep.Last(), "4.3.0") {
			t.Errorf("RCPT #%d in a new session with the database down: %q, want 451 4.3.0", i+1, rep.Lines)
		}
	}
	if res.Data != nil {
		t.Errorf("DATA went through with the database down: %q", res.Data.Lines)
	}

	// Only the message from before the stop was delivered.
	pmExpectCounts(t, map[pmSink]int{addrSink: 1, domSink: 0, defSink: 0})
	log := tailFile(w.StderrPath, 1<<20)
	if !strings.Contains(log, "lookup failed") {
		t.Errorf("willi's log names no lookup failure:\n%s", log)
	}
	pmNoPassword(t, "willi's log", log)
}

// TestPeerMariaDBSlowQuery: a query that takes longer than the read timeout
// (the DSN's readTimeout, or willi's 5 s default when the DSN sets none) is
// cut off with 451 4.3.0; the static mapping after it is not asked.
func TestPeerMariaDBSlowQuery(t *testing.T) {
	needRoot(t)
	bin := buildWilli(t)
	db := mariadb.Shared(t)
	addrSink := pmStartSink(t, "address")
	defSink := pmStartSink(t, "static")
	table := pmRoutesTable(t, db, [][2]string{{"alice@example.com", addrSink.Addr}})
	// SLEEP runs for the row the key finds: alice@example.com's lookup
	// takes 20 s, far beyond either timeout.
	slow := "SELECT server FROM " + table + " WHERE pattern = ? AND SLEEP(20) = 0"
	for _, tc := range []struct{ name, params string }{
		{"dsn_read_timeout", "readTimeout=1s"},
		{"default_timeout", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := writeConfig(t, t.TempDir(), pmConfig(db.DSN(tc.params), slow, defSink.Addr))
			w := startWilliActivated(t, bin, cfg, williLaunchOpts{})
			res := pmSession(t, w.Addr, []string{"alice@example.com"}, "slow "+tc.name)
			if len(res.Rcpt) != 1 || res.Rcpt[0].Code != 451 || !strings.HasPrefix(res.Rcpt[0].Last(), "4.3.0") {
				t.Errorf("RCPT with a slow query: %q, want 451 4.3.0", res.Rcpt)
			}
			if res.Data != nil {
				t.Errorf("DATA went through: %q", res.Data.Lines)
			}
			log := tailFile(w.StderrPath, 1<<20)
			if !strings.Contains(log, "lookup failed") {
				t.Errorf("willi's log names no lookup failure:\n%s", log)
			}
			pmNoPassword(t, "willi's log", log)
		})
	}
	pmExpectCounts(t, map[pmSink]int{addrSink: 0, defSink: 0})
}

// TestPeerMariaDBCheck: `willi check` connects and prepares the query; a
// bad query, bad credentials and an unreachable server are each reported
// with the mapping they belong to, exit 1, and never with the password.
func TestPeerMariaDBCheck(t *testing.T) {
	bin := buildWilli(t)
	db := mariadb.Shared(t)
	table := pmRoutesTable(t, db, [][2]string{{"example.com", "mx.internal:25"}})
	good := "SELECT server FROM " + table + " WHERE pattern = ?"
	wrongPw := strings.Replace(db.DSN(""), ":"+mariadb.Password+"@", ":Wrong-"+mariadb.Password+"@", 1)
	cases := []struct {
		name, dsn, query string
		status           int
		want             []string
	}{
		{"good", db.DSN(""), good, 0, []string{"ok"}},
		{"no_such_table", db.DSN(""), "SELECT server FROM no_such_table WHERE pattern = ?", 1,
			[]string{"[[mapping]] #1 (mysql)", "no_such_table"}},
		{"syntax_error", db.DSN(""), "SELEKT server FROM " + table + " WHERE pattern = ?", 1,
			[]string{"[[mapping]] #1 (mysql)", "syntax"}},
		{"no_such_column", db.DSN(""), "SELECT srv FROM " + table + " WHERE pattern = ?", 1,
			[]string{"[[mapping]] #1 (mysql)", "srv"}},
		{"wrong_password", wrongPw, good, 1,
			[]string{"[[mapping]] #1 (mysql)", "Access denied"}},
		{"unknown_user", strings.Replace(db.DSN(""), mariadb.User+":", "mallory:", 1), good, 1,
			[]string{"[[mapping]] #1 (mysql)", "Access denied"}},
		{"server_down", fmt.Sprintf("%s:%s@tcp(127.0.0.1:%d)/mail?timeout=2s", mariadb.User, mariadb.Password, deadPort(t)), good, 1,
			[]string{"[[mapping]] #1 (mysql)"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := writeConfig(t, t.TempDir(), pmConfig(tc.dsn, tc.query, "fallback.internal:25"))
			out, status := pmWilliCommand(t, bin, "check", "-config", cfg)
			t.Logf("willi check (exit %d):\n%s", status, out)
			if status != tc.status {
				t.Errorf("exit status %d, want %d", status, tc.status)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q", w)
				}
			}
			if !strings.Contains(out, cfg) {
				t.Errorf("output does not name the config file %s", cfg)
			}
			pmNoPassword(t, "willi check", out)
		})
	}
}

// TestPeerMariaDBLookup: `willi lookup` names the mapping and the key that
// answered: an address row, a domain row, a parent-domain row, and the
// static mapping for a key with no row; with the database down it is a
// lookup error (exit 2) without the password.
func TestPeerMariaDBLookup(t *testing.T) {
	bin := buildWilli(t)
	db := mariadb.Shared(t)
	table := pmRoutesTable(t, db, [][2]string{
		{"alice@example.com", "alice-mx.internal:2525"},
		{"example.com", "mx1.internal:25 mx2.internal:25"},
		{".example.net", "sub-mx.internal"},
	})
	query := "SELECT server FROM " + table + " WHERE pattern = ?"
	cfg := writeConfig(t, t.TempDir(), pmConfig(db.DSN(""), query, "fallback.internal:25"))
	mapping := fmt.Sprintf("mysql:%s@tcp(%s)/mail", mariadb.User, db.Addr)

	out, status := pmWilliCommand(t, bin, "lookup", "-config", cfg,
		"alice@example.com", "Alice+Tag@Example.COM", "bob@example.com", "carol@a.b.example.net", "dave@nowhere.test")
	t.Logf("willi lookup (exit %d):\n%s", status, out)
	if status != 0 {
		t.Errorf("exit status %d, want 0 (all routed)", status)
	}
	for _, want := range []string{
		"alice@example.com -> alice-mx.internal:2525 (mapping " + mapping + ", key alice@example.com)",
		"Alice+Tag@example.com -> alice-mx.internal:2525 (mapping " + mapping + ", key alice@example.com)",
		"bob@example.com -> mx1.internal:25 mx2.internal:25 (mapping " + mapping + ", key example.com)",
		"carol@a.b.example.net -> sub-mx.internal:25 (mapping " + mapping + ", key .example.net)",
		"dave@nowhere.test -> fallback.internal:25 (mapping static",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("lookup output lacks %q", want)
		}
	}
	pmNoPassword(t, "willi lookup", out)

	// Without the static default, a miss is "no route", exit 1.
	cfgNoDefault := writeConfig(t, t.TempDir(), fmt.Sprintf(`hostname = "willi.test"
[[mapping]]
type = "mysql"
dsn = %q
query = %q
`, db.DSN(""), query))
	out, status = pmWilliCommand(t, bin, "lookup", "-config", cfgNoDefault, "bob@example.com", "dave@nowhere.test")
	if status != 1 || !strings.Contains(out, "dave@nowhere.test: no route") ||
		!strings.Contains(out, "bob@example.com -> mx1.internal:25 mx2.internal:25") {
		t.Errorf("lookup with a miss and no default (exit %d, want 1):\n%s", status, out)
	}

	// Bad credentials: a lookup error, exit 2, no fall-through to static.
	badCfg := writeConfig(t, t.TempDir(), pmConfig(
		strings.Replace(db.DSN(""), ":"+mariadb.Password+"@", ":Wrong-"+mariadb.Password+"@", 1), query, "fallback.internal:25"))
	out, status = pmWilliCommand(t, bin, "lookup", "-config", badCfg, "alice@example.com")
	t.Logf("willi lookup with bad credentials (exit %d):\n%s", status, out)
	if status != 2 || !strings.Contains(out, "lookup error") || strings.Contains(out, "fallback.internal") {
		t.Errorf("lookup with bad credentials: exit %d, want 2 and a lookup error without fall-through:\n%s", status, out)
	}
	pmNoPassword(t, "willi lookup", out)
}
