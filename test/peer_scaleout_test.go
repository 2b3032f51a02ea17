package test

// Real-peer tests for what goes beyond the other SMTP proxies (issue 8), on
// top of peer_proxy_test.go (HAProxy send-proxy/send-proxy-v2 in front with
// Postfix's Received: naming the client, a trusted peer without a header,
// PROXY v1/v2 out to Postfix) and TestPeerFailover (refused, 421 banner,
// all down):
//
//   - a PROXY header from an untrusted peer, raw and from a real HAProxy, is
//     refused without a banner;
//   - failover names the server used and every server tried in the log, and
//     also moves on from a scripted 421/450 greeting and from a silent server;
//   - subdomain routes (.example.com) in `willi lookup` and in delivery;
//   - scaling out: two willi hosts behind one real HAProxy running the
//     README's "Scaling out" configuration, both reading one MariaDB table.

import (
	"willi/internal/smtptest"
	"willi/test/mariadb"

	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// soLogLines returns the lines of a willi log whose msg is msg.
func soLogLines(log, msg string) []string {
	want := "msg=" + msg
	if strings.ContainsAny(msg, " =\"") {
		want = fmt.Sprintf("msg=%q", msg)
	}
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, " "+want+" ") || strings.HasSuffix(l, " "+want) {
			out = append(out, l)
		}
	}
	return out
}

// soField returns the value of key=value in a log line ("" if absent).
func soField(line, key string) string {
	m := regexp.MustCompile(`(?:^| )` + regexp.QuoteMeta(key) + `=("(?:[^"\\]|\\.)*"|\S*)`).FindStringSubmatch(line)
	if m == nil {
		return ""
	}
	return strings.Trim(m[1], `"`)
}

// soFakeUpstream is a scripted upstream for fault injection: for every
// connection it writes greeting (nothing when "") and then keeps the
// connection open, silent, until the test ends.
type soFakeUpstream struct {
	Addr  string
	Conns atomic.Int64
}

func startSoFakeUpstream(t testing.TB, greeting string) *soFakeUpstream {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &soFakeUpstream{Addr: l.Addr().String()}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			f.Conns.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			if greeting != "" {
				c.SetWriteDeadline(time.Now().Add(10 * time.Second))
				io.WriteString(c, greeting)
			}
			// Swallow whatever comes (a QUIT after a 4xx greeting).
			go io.Copy(io.Discard, c)
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return f
}

// soExpectClosedWithoutBanner reads from c until willi closes it and fails
// when anything like a banner arrived.
func soExpectClosedWithoutBanner(t testing.TB, c net.Conn, what string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Errorf("%s: reading until close: %v (got %q); willi should close the connection", what, err, got)
	}
	if len(got) != 0 {
		t.Errorf("%s: got %q, want the connection closed without a banner", what, got)
	}
}

// TestPeerProxyUntrustedHeader: with [proxy_protocol] set, a PROXY header
// (v1 or v2) from a peer that is not trusted is refused without a banner:
// sent raw by a client, and sent by a real HAProxy that willi does not
// trust. A plain session from the same peer still works.
func TestPeerProxyUntrustedHeader(t *testing.T) {
	needRoot(t)
	bin := buildWilli(t)
	sinkAddr, dumpDir := startSMTPSink(t)
	// Only 127.0.0.9 is trusted: the client (127.0.0.2) and HAProxy
	// (127.0.0.1) are not.
	cfg := writeConfig(t, t.TempDir(), williTestConfig(sinkAddr, `
[proxy_protocol]
trusted = ["127.0.0.9/32"]
`))
	w := startWilliActivated(t, bin, cfg, williLaunchOpts{})

	src := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 33577}
	dst := &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 25}
	for _, version := range []byte{1, 2} {
		t.Run(fmt.Sprintf("raw_v%d", version), func(t *testing.T) {
			hdr, err := proxyproto.HeaderProxyFromAddrs(version, src, dst).Format()
			if err != nil {
				t.Fatal(err)
			}
			c := dialSMTP(t, w.Addr, "127.0.0.2")
			// The header at once, as a load balancer sends it, and a
			// command after it.
			if _, err := c.Conn.Write(append(hdr, "EHLO spoofed.example\r\n"...)); err != nil {
				t.Fatal(err)
			}
			soExpectClosedWithoutBanner(t, c.Conn, fmt.Sprintf("untrusted PROXY v%d header", version))
		})
	}

	for _, mode := range []string{"send-proxy-v2", "send-proxy"} {
		t.Run("haproxy_"+mode, func(t *testing.T) {
			hap := startHAProxy(t, w.Addr, mode)
			c := dialSMTP(t, hap, "127.0.0.2")
			soExpectClosedWithoutBanner(t, c.Conn, "HAProxy ("+mode+") that willi does not trust")
		})
	}

	t.Run("plain_session_still_served", func(t *testing.T) {
		res := pmSession(t, w.Addr, []string{"alice@example.org"}, "plain-untrusted-peer")
		if !strings.HasPrefix(res.Banner.Lines[0], "220 willi.test ESMTP") || res.Data == nil || res.Data.Code != 250 {
			t.Fatalf("plain session: %+v", res)
		}
	})

	if n := len(readSinkMessages(t, dumpDir, 1, 20*time.Second)); n != 1 {
		t.Errorf("sink got %d messages, want only the plain session's", n)
	}
	time.Sleep(300 * time.Millisecond)
	log := tailFile(w.StderrPath, 1<<20)
	if n := len(soLogLines(log, "PROXY header from an untrusted peer refused")); n != 4 {
		t.Errorf("willi logged %d refusals of an untrusted PROXY header, want 4 (2 raw, 2 HAProxy):\n%s", n, log)
	}
}

// soFailoverConfig routes everything to server, with a short connect
// timeout so that a silent server is given up quickly.
func soFailoverConfig(server string) string {
	return fmt.Sprintf(`hostname = "willi.test"
log_level = "debug"
command_timeout = "60s"
upstream_connect_timeout = "2s"

[[mapping]]
type = "static"
server = %q
`, server)
}

// TestPeerFailoverLogged: a server string with several servers is tried in
// order; the servers that failed and the one used are named in willi's log.
// Beyond TestPeerFailover: a scripted 421 and 450 greeting, a server that
// accepts and never greets, and the log.
func TestPeerFailoverLogged(t *testing.T) {
	needRoot(t)
	bin := buildWilli(t)

	type failed struct{ server, msg string }
	run := func(t *testing.T, servers []string, bad []failed, sink pmSink) {
		t.Helper()
		cfg := writeConfig(t, t.TempDir(), soFailoverConfig(strings.Join(servers, " ")))
		w := startWilliActivated(t, bin, cfg, williLaunchOpts{})
		token := "failover-" + strings.ReplaceAll(t.Name(), "/", "-")
		res := pmSession(t, w.Addr, []string{"alice@example.org"}, token)
		if len(res.Rcpt) != 1 || res.Rcpt[0].Code != 250 {
			t.Fatalf("RCPT: %q, want 250 from %s", res.Rcpt, sink.Addr)
		}
		if res.Data == nil || res.Data.Code != 250 || res.Data.Last() != "2.0.0 Ok" {
			t.Fatalf("end of data: %+v", res.Data)
		}
		pmSinkHas(t, sink, token)
		time.Sleep(200 * time.Millisecond) // the session's last log lines
		log := tailFile(w.StderrPath, 1<<20)
		tx := soLogLines(log, "transaction")
		if len(tx) != 1 {
			t.Fatalf("%d transaction log lines, want 1:\n%s", len(tx), log)
		}
		if got := soField(tx[0], "upstream"); got != sink.Addr {
			t.Errorf("transaction log names upstream %q, want the server used, %s:\n%s", got, sink.Addr, tx[0])
		}
		for _, b := range bad {
			found := false
			for _, l := range soLogLines(log, b.msg) {
				if soField(l, "upstream") == b.server {
					found = true
				}
			}
			if !found {
				t.Errorf("log has no %q line naming %s:\n%s", b.msg, b.server, log)
			}
		}
	}

	t.Run("refused_then_sink", func(t *testing.T) {
		sink := pmStartSink(t, "second")
		dead := fmt.Sprintf("127.0.0.1:%d", deadPort(t))
		run(t, []string{dead, sink.Addr}, []failed{{dead, "upstream connect failed"}}, sink)
	})

	for _, greeting := range []string{
		"421 4.3.2 fake.test Service not available, closing transmission channel\r\n",
		"450 4.3.2 fake.test busy, try later\r\n",
	} {
		t.Run("greeting_"+greeting[:3]+"_then_sink", func(t *testing.T) {
			fake := startSoFakeUpstream(t, greeting)
			sink := pmStartSink(t, "second")
			run(t, []string{fake.Addr, sink.Addr}, []failed{{fake.Addr, "upstream refused the connection"}}, sink)
			if n := fake.Conns.Load(); n != 1 {
				t.Errorf("the %s server had %d connections, want 1", greeting[:3], n)
			}
		})
	}

	t.Run("silent_then_sink", func(t *testing.T) {
		fake := startSoFakeUpstream(t, "")
		sink := pmStartSink(t, "second")
		run(t, []string{fake.Addr, sink.Addr}, []failed{{fake.Addr, "upstream banner failed"}}, sink)
	})

	t.Run("third_of_three", func(t *testing.T) {
		fake := startSoFakeUpstream(t, "421 4.7.0 fake.test too busy\r\n")
		sink := pmStartSink(t, "third")
		dead := fmt.Sprintf("127.0.0.1:%d", deadPort(t))
		run(t, []string{dead, fake.Addr, sink.Addr},
			[]failed{{dead, "upstream connect failed"}, {fake.Addr, "upstream refused the connection"}}, sink)
	})

	t.Run("all_down", func(t *testing.T) {
		fake := startSoFakeUpstream(t, "421 4.3.2 fake.test closing\r\n")
		dead := fmt.Sprintf("127.0.0.1:%d", deadPort(t))
		cfg := writeConfig(t, t.TempDir(), soFailoverConfig(dead+" "+fake.Addr))
		w := startWilliActivated(t, bin, cfg, williLaunchOpts{})
		res := pmSession(t, w.Addr, []string{"alice@example.org"}, "all down")
		if len(res.Rcpt) != 1 || res.Rcpt[0].Code != 451 || !strings.HasPrefix(res.Rcpt[0].Last(), "4.4.1") {
			t.Fatalf("RCPT with every server down: %q, want 451 4.4.1", res.Rcpt)
		}
		if res.Data != nil {
			t.Errorf("DATA answered %q with no recipient accepted", res.Data.Lines)
		}
		time.Sleep(200 * time.Millisecond)
		log := tailFile(w.StderrPath, 1<<20)
		for _, b := range []failed{{dead, "upstream connect failed"}, {fake.Addr, "upstream refused the connection"}} {
			found := false
			for _, l := range soLogLines(log, b.msg) {
				found = found || soField(l, "upstream") == b.server
			}
			if !found {
				t.Errorf("log has no %q line naming %s:\n%s", b.msg, b.server, log)
			}
		}
	})
}

// TestPeerSubdomainRoutes: a pattern ".example.com" matches every subdomain
// of example.com but not example.com itself; an exact domain and a more
// specific parent win over it. Shown by `willi lookup` and by delivery to
// the smtp-sink each route names.
func TestPeerSubdomainRoutes(t *testing.T) {
	needRoot(t)
	bin := buildWilli(t)
	subSink := pmStartSink(t, "subdomains")
	otherSink := pmStartSink(t, "specific")
	dir := t.TempDir()
	csvPath := filepath.Join(dir, "routes.csv")
	csv := fmt.Sprintf(`pattern,server
.example.com,%[1]s
exact.example.com,%[2]s
.deep.example.com,%[2]s
`, subSink.Addr, otherSink.Addr)
	if err := os.WriteFile(csvPath, []byte(csv), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, dir, `hostname = "willi.test"
log_level = "debug"
command_timeout = "60s"

[[mapping]]
type = "csv"
file = "routes.csv"
`)
	mapping := "csv:" + csvPath

	routes := []struct {
		rcpt, server, key string
		sink              pmSink
	}{
		{"a@b.example.com", subSink.Addr, ".example.com", subSink},
		{"a@x.y.Example.COM", subSink.Addr, ".example.com", subSink},
		{"a@exact.example.com", otherSink.Addr, "exact.example.com", otherSink},
		{"a@sub.exact.example.com", subSink.Addr, ".example.com", subSink},
		{"a@z.deep.example.com", otherSink.Addr, ".deep.example.com", otherSink},
		{"a@deep.example.com", subSink.Addr, ".example.com", subSink},
	}
	noRoute := []string{"a@example.com", "a@notexample.com", "a@example.com.evil.test"}

	t.Run("lookup", func(t *testing.T) {
		var args []string
		for _, r := range routes {
			args = append(args, r.rcpt)
		}
		out, status := pmWilliCommand(t, bin, append([]string{"lookup", "-config", cfg}, args...)...)
		t.Logf("willi lookup (exit %d):\n%s", status, out)
		if status != 0 {
			t.Errorf("exit status %d, want 0", status)
		}
		for _, r := range routes {
			canon := r.rcpt[:strings.IndexByte(r.rcpt, '@')+1] + strings.ToLower(r.rcpt[strings.IndexByte(r.rcpt, '@')+1:])
			want := fmt.Sprintf("%s -> %s (mapping %s, key %s)", canon, r.server, mapping, r.key)
			if !strings.Contains(out, want) {
				t.Errorf("lookup output lacks %q", want)
			}
		}
		out, status = pmWilliCommand(t, bin, append([]string{"lookup", "-config", cfg}, noRoute...)...)
		if status != 1 {
			t.Errorf("lookup of addresses no pattern matches: exit %d, want 1:\n%s", status, out)
		}
		for _, a := range noRoute {
			if !strings.Contains(out, a+": no route") {
				t.Errorf("lookup output lacks %q:\n%s", a+": no route", out)
			}
		}
	})

	t.Run("delivery", func(t *testing.T) {
		w := startWilliActivated(t, bin, cfg, williLaunchOpts{})
		want := map[pmSink]int{subSink: 0, otherSink: 0}
		for i, r := range routes {
			token := fmt.Sprintf("subdomain-%d", i)
			res := pmSession(t, w.Addr, []string{r.rcpt}, token)
			if len(res.Rcpt) != 1 || res.Rcpt[0].Code != 250 || res.Data == nil || res.Data.Code != 250 {
				t.Errorf("%s: RCPT %q, end of data %+v", r.rcpt, res.Rcpt, res.Data)
				continue
			}
			pmSinkHas(t, r.sink, token)
			want[r.sink]++
		}
		for _, a := range noRoute {
			res := pmSession(t, w.Addr, []string{a}, "no route")
			if len(res.Rcpt) != 1 || res.Rcpt[0].Code != 550 || !strings.HasPrefix(res.Rcpt[0].Last(), "5.7.1") {
				t.Errorf("RCPT %s: %q, want 550 5.7.1 (no route)", a, res.Rcpt)
			}
		}
		pmExpectCounts(t, want)
	})
}

// soReadmeScalingOut returns README.md's "Scaling out" section.
func soReadmeScalingOut(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "\n## Scaling out\n")
	if !ok {
		t.Fatal(`README.md has no "## Scaling out" section`)
	}
	if i := strings.Index(sec, "\n## "); i >= 0 {
		sec = sec[:i]
	}
	return sec
}

// soReadmeBlock returns the code block of the Scaling out section that
// contains marker.
func soReadmeBlock(t testing.TB, sec, marker string) string {
	t.Helper()
	parts := strings.Split(sec, "\n```")
	for i := 1; i < len(parts); i += 2 {
		block := strings.TrimPrefix(parts[i], "\n")
		if strings.Contains(block, marker) {
			return block + "\n"
		}
	}
	t.Fatalf("README's Scaling out section has no code block with %q", marker)
	return ""
}

// soReadmeHAProxyConfig returns the HAProxy configuration of README.md's
// "Scaling out" section with its addresses made loopback ones: the
// frontend on frontAddr, mx1 and mx2 on the two willi hosts. It also
// returns the README's [proxy_protocol] line for the willi hosts.
func soReadmeHAProxyConfig(t testing.TB, frontAddr, mx1, mx2 string) (cfg, trustedLine string) {
	t.Helper()
	sec := soReadmeScalingOut(t)
	block := soReadmeBlock(t, sec, "frontend smtp")
	for _, want := range []string{"frontend smtp", "bind :25", "backend willi", "send-proxy-v2", " 10.0.0.11:25 ", " 10.0.0.12:25 "} {
		if !strings.Contains(block, want) {
			t.Fatalf("README's HAProxy config lacks %q (the test substitutes loopback addresses for it):\n%s", want, block)
		}
	}
	m := regexp.MustCompile("`\\[proxy_protocol\\] (trusted = \\[[^]]*\\])`").FindStringSubmatch(sec)
	if m == nil {
		t.Fatalf("README's Scaling out section shows no `[proxy_protocol] trusted = [...]` for the willi hosts")
	}
	cfg = strings.NewReplacer("bind :25", "bind "+frontAddr, " 10.0.0.11:25 ", " "+mx1+" ", " 10.0.0.12:25 ", " "+mx2+" ").Replace(block)
	return cfg, m[1]
}

// soWilliHosts starts the two willi hosts, mx1 and mx2, each with the
// README's [proxy_protocol] (trusting HAProxy on 127.0.0.1) and one mysql
// mapping (dsn, query). It returns them by name and their addresses.
func soWilliHosts(t testing.TB, bin, dsn, query string) (map[string]*williListener, []string) {
	t.Helper()
	_, trusted := soReadmeHAProxyConfig(t, "127.0.0.1:25", "127.0.0.1:1", "127.0.0.1:2")
	// The README trusts HAProxy's address; here HAProxy is 127.0.0.1.
	trusted = regexp.MustCompile(`\[[^]]*\]`).ReplaceAllString(trusted, `["127.0.0.1/32"]`)
	hosts := map[string]*williListener{}
	var addrs []string
	for _, name := range []string{"mx1", "mx2"} {
		cfg := writeConfig(t, t.TempDir(), fmt.Sprintf(`hostname = "%s.test"
log_level = "debug"
command_timeout = "60s"
upstream_connect_timeout = "5s"

[proxy_protocol]
%s

[[mapping]]
type = "mysql"
dsn = %q
query = %q
`, name, trusted, dsn, query))
		hosts[name] = startWilliActivated(t, bin, cfg, williLaunchOpts{})
		addrs = append(addrs, hosts[name].Addr)
	}
	return hosts, addrs
}

// TestPeerScaleOut: two willi hosts (two socket-activated listeners with
// their own configs and host names) behind one real HAProxy running the
// README's "Scaling out" configuration (PROXY protocol v2, health checks),
// both routing from one MariaDB table. Messages reach the sink their route
// names, sessions reach both hosts, each host logs the client behind
// HAProxy and passes its HELO on with XCLIENT, and a change to the table
// applies to the next session on every host.
func TestPeerScaleOut(t *testing.T) {
	needRoot(t)
	bin := buildWilli(t)
	db := mariadb.Shared(t)
	sinkA := pmStartSink(t, "A")
	sinkB := pmStartSink(t, "B")
	table := pmRoutesTable(t, db, [][2]string{
		{"alice@example.com", sinkA.Addr},
		{"example.com", sinkB.Addr},
		{".example.net", sinkA.Addr},
	})
	query := "SELECT server FROM " + table + " WHERE pattern = ?"

	hosts, addrs := soWilliHosts(t, bin, db.DSN(""), query)

	for _, variant := range []string{"readme", "roundrobin"} {
		t.Run(variant, func(t *testing.T) {
			front := fmt.Sprintf("127.0.0.1:%d", smtptest.FreePort(t))
			hcfg, _ := soReadmeHAProxyConfig(t, front, addrs[0], addrs[1])
			if variant == "roundrobin" {
				hcfg = strings.Replace(hcfg, "balance leastconn", "balance roundrobin", 1)
				if !strings.Contains(hcfg, "balance roundrobin") {
					t.Fatalf("no balance line to replace in:\n%s", hcfg)
				}
			}
			startHAProxyConfig(t, hcfg, front)
			before := map[pmSink]int{sinkA: sinkA.count(), sinkB: sinkB.count()}

			rcpts := []struct {
				addr string
				sink pmSink
			}{
				{"alice@example.com", sinkA},
				{"bob@example.com", sinkB},
				{"carol@mx.example.net", sinkA},
				{"Alice@Example.com", sinkA},
				{"dave@example.com", sinkB},
				{"erin@a.b.example.net", sinkA},
			}
			var seq []string
			want := map[pmSink]int{sinkA: before[sinkA], sinkB: before[sinkB]}
			for i, r := range rcpts {
				token := fmt.Sprintf("scaleout-%s-%d", variant, i)
				res := pmSession(t, front, []string{r.addr}, token)
				host := strings.TrimSuffix(strings.Fields(res.Banner.Lines[0])[1], ".test")
				seq = append(seq, host)
				if len(res.Rcpt) != 1 || res.Rcpt[0].Code != 250 || res.Data == nil || res.Data.Code != 250 {
					t.Fatalf("session %d via %s: RCPT %q, end of data %+v", i, host, res.Rcpt, res.Data)
				}
				m := pmSinkHas(t, r.sink, token)
				// willi passed the client's HELO on with XCLIENT (smtp-sink
				// offers XCLIENT NAME HELO only; the address through both
				// hops is in willi's log, checked below, and at Postfix in
				// TestPeerHAProxyInFront).
				if m.Helo != "client.example" {
					t.Errorf("session %d via %s: the sink saw HELO %q, want the client's, client.example", i, host, m.Helo)
				}
				want[r.sink]++
			}
			t.Logf("hosts in order: %v", seq)
			served := map[string]int{}
			for _, h := range seq {
				if h != "mx1" && h != "mx2" {
					t.Fatalf("banner from an unknown host: %v", seq)
				}
				served[h]++
			}
			// Both balancing modes spread sequential sessions over both
			// hosts; how evenly is HAProxy's business.
			if served["mx1"] == 0 || served["mx2"] == 0 {
				t.Errorf("HAProxy sent every session to one host: %v", seq)
			}
			pmExpectCounts(t, want)
		})
	}

	// Both hosts logged their transactions with the client behind HAProxy.
	for name, w := range hosts {
		log := tailFile(w.StderrPath, 4<<20)
		tx := soLogLines(log, "transaction")
		if len(tx) == 0 {
			t.Errorf("host %s logged no transaction", name)
		}
		for _, l := range tx {
			if c := soField(l, "client"); !strings.HasPrefix(c, "127.0.0.2:") {
				t.Errorf("host %s logged client %q, want the one behind HAProxy (127.0.0.2): %s", name, c, l)
			}
		}
		pmNoPassword(t, "willi's log on "+name, log)
	}

	t.Run("table_change_applies_to_every_host", func(t *testing.T) {
		front := fmt.Sprintf("127.0.0.1:%d", smtptest.FreePort(t))
		hcfg, _ := soReadmeHAProxyConfig(t, front, addrs[0], addrs[1])
		startHAProxyConfig(t, hcfg, front)
		root := pmRoot(t, db)
		defer root.Close()
		// example.com moves from sink B to sink A.
		if _, err := root.Exec("UPDATE "+table+" SET server = ? WHERE pattern = 'example.com'", sinkA.Addr); err != nil {
			t.Fatal(err)
		}
		before := map[pmSink]int{sinkA: sinkA.count(), sinkB: sinkB.count()}
		seen := map[string]bool{}
		for i := 0; i < 4; i++ {
			token := fmt.Sprintf("scaleout-moved-%d", i)
			res := pmSession(t, front, []string{"bob@example.com"}, token)
			seen[strings.Fields(res.Banner.Lines[0])[1]] = true
			if res.Data == nil || res.Data.Code != 250 {
				t.Fatalf("session %d: RCPT %q, end of data %+v", i, res.Rcpt, res.Data)
			}
			pmSinkHas(t, sinkA, token)
		}
		if !seen["mx1.test"] || !seen["mx2.test"] {
			t.Errorf("the sessions did not reach both hosts: %v", seen)
		}
		pmExpectCounts(t, map[pmSink]int{sinkA: before[sinkA] + 4, sinkB: before[sinkB]})
	})
}
