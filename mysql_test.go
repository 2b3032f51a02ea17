package main

import (
	"willi/test/mariadb"

	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

const routesQuery = "SELECT server FROM routes WHERE pattern = ?"

// noPassword fails the test if an error text shows the DSN password.
func noPassword(t *testing.T, err error) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), mariadb.Password) {
		t.Fatalf("error shows the password: %v", err)
	}
}

// mysqlChain is [mysql, static] as a config would build it.
func mysqlChain(t *testing.T, dsn, query string) *Chain {
	t.Helper()
	ch, err := newChain(&Config{Mappings: []MappingConfig{
		{Type: "mysql", DSN: dsn, Query: query},
		{Type: "static", Server: "fallback.internal:25"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ch.Close)
	return ch
}

func TestMySQLRoute(t *testing.T) {
	db := mariadb.Shared(t)
	ch := mysqlChain(t, db.DSN(""), routesQuery)
	tests := []struct{ addr, mapping, key, id string }{
		{"alice@example.com", "mysql", "alice@example.com", "alice-mx.internal:2525"},
		{"Alice+tag@Example.COM", "mysql", "alice@example.com", "alice-mx.internal:2525"},
		{"bob@example.com", "mysql", "example.com", "mx1.internal:25 mx2.internal:25"},
		{"x@deep.sub.example.org", "mysql", ".example.org", "[::1]:2525"},
		{"x@nowhere.test", "static", "x@nowhere.test", "fallback.internal:25"},
		{"x@empty.example", "static", "x@empty.example", "fallback.internal:25"},   // '' is no answer
		{"x@spaces.example", "static", "x@spaces.example", "fallback.internal:25"}, // so is blank
	}
	for _, tc := range tests {
		r, err := ch.Route(context.Background(), strings.ToLower(tc.addr), "+")
		if err != nil {
			t.Fatalf("%s: %v", tc.addr, err)
		}
		if !strings.HasPrefix(r.Mapping, tc.mapping) || r.Key != tc.key || r.ID() != tc.id {
			t.Errorf("%s: got %s %q %q, want %s %q %q", tc.addr, r.Mapping, r.Key, r.ID(), tc.mapping, tc.key, tc.id)
		}
	}
}

func TestMySQLNullAndSeveralRows(t *testing.T) {
	db := mariadb.Shared(t)
	m, err := newMySQLMapping(db.DSN(""), "SELECT server FROM loose WHERE pattern = ? ORDER BY server")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx := context.Background()
	if key, _, err := m.Lookup(ctx, []string{"null.example"}); key != "" || err != nil {
		t.Errorf("NULL: got %q %v, want no answer", key, err)
	}
	key, server, err := m.Lookup(ctx, []string{"a@dup.example", "dup.example"})
	if key != "dup.example" || server != "first.internal" || err != nil {
		t.Errorf("two rows: got %q %q %v, want the first", key, server, err)
	}
	// Extra columns are ignored: the first one is the server.
	m2, _ := newMySQLMapping(db.DSN(""), "SELECT server, pattern, 42 FROM routes WHERE pattern = ?")
	defer m2.Close()
	if _, server, err := m2.Lookup(ctx, []string{"example.com"}); server != "mx1.internal:25 mx2.internal:25" || err != nil {
		t.Errorf("extra columns: %q %v", server, err)
	}
}

// TestMySQLPreparedOnce: one connection and one prepared statement serve
// every lookup of a process.
func TestMySQLPreparedOnce(t *testing.T) {
	db := mariadb.Shared(t)
	root, err := sql.Open("mysql", "root@unix("+db.Socket+")/")
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	status := func(name string) int {
		var n string
		var v int
		if err := root.QueryRow("SHOW GLOBAL STATUS LIKE '"+name+"'").Scan(&n, &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	prep, conns := status("Com_stmt_prepare"), status("Connections")
	m, _ := newMySQLMapping(db.DSN(""), routesQuery)
	for _, a := range []string{"a@example.com", "b@x.example.org", "c@nowhere.test"} {
		if _, _, err := m.Lookup(context.Background(), lookupKeys(a, "")); err != nil {
			t.Fatal(err)
		}
	}
	m.Close()
	if d := status("Com_stmt_prepare") - prep; d != 1 {
		t.Errorf("%d prepares, want 1", d)
	}
	if d := status("Connections") - conns; d != 1 {
		t.Errorf("%d connections, want 1", d)
	}
}

func TestMySQLSlowQueryTimesOut(t *testing.T) {
	db := mariadb.Shared(t)
	ch := mysqlChain(t, db.DSN("readTimeout=500ms"), "SELECT server FROM routes WHERE pattern = ? AND SLEEP(5) = 0")
	start := time.Now()
	_, err := ch.Route(context.Background(), "alice@example.com", "")
	var le *lookupError
	if !errors.As(err, &le) {
		t.Fatalf("got %v, want a lookup error (and no fallback to static)", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("timeout took %v", took)
	}
	noPassword(t, err)
}

func TestMySQLDefaultTimeouts(t *testing.T) {
	m, err := newMySQLMapping("u:p@tcp(127.0.0.1:3306)/mail", routesQuery)
	if err != nil {
		t.Fatal(err)
	}
	cfg := m.(*mysqlMapping).cfg
	if cfg.Timeout != 5*time.Second || cfg.ReadTimeout != 5*time.Second || cfg.WriteTimeout != 5*time.Second {
		t.Errorf("defaults: %v %v %v", cfg.Timeout, cfg.ReadTimeout, cfg.WriteTimeout)
	}
	m, _ = newMySQLMapping("u:p@tcp(127.0.0.1:3306)/mail?timeout=1s&readTimeout=2s&writeTimeout=3s&interpolateParams=true", routesQuery)
	cfg = m.(*mysqlMapping).cfg
	if cfg.Timeout != time.Second || cfg.ReadTimeout != 2*time.Second || cfg.WriteTimeout != 3*time.Second || cfg.InterpolateParams {
		t.Errorf("DSN values: %v %v %v %v", cfg.Timeout, cfg.ReadTimeout, cfg.WriteTimeout, cfg.InterpolateParams)
	}
	if got := m.String(); got != "mysql:u@tcp(127.0.0.1:3306)/mail" {
		t.Errorf("String() = %q", got)
	}
}

func TestMySQLConfigErrors(t *testing.T) {
	for _, dsn := range []string{
		"willi:" + mariadb.Password + "@tcp(127.0.0.1:3306)",       // no /db
		"willi:" + mariadb.Password + "@tcp(127.0.0.1:3306/mail",   // no )
		"willi:" + mariadb.Password + "@tcp(127.0.0.1)/mail?x=%zz", // bad escape
	} {
		_, err := newMySQLMapping(dsn, routesQuery)
		if err == nil {
			t.Errorf("%s: want an error", dsn)
		}
		noPassword(t, err)
	}
	for _, q := range []string{"SELECT server FROM routes", "SELECT server FROM routes WHERE pattern = ? OR pattern = ?"} {
		if _, err := newMySQLMapping("u:p@tcp(127.0.0.1)/mail", q); err == nil {
			t.Errorf("%q: want an error", q)
		}
	}
}

// TestMySQLLazy: making the mapping touches nothing; an unreachable
// server is an error at the first lookup.
func TestMySQLLazy(t *testing.T) {
	m, err := newMySQLMapping("willi:"+mariadb.Password+"@tcp(127.0.0.1:1)/mail?timeout=1s", routesQuery)
	if err != nil {
		t.Fatalf("constructor must not connect: %v", err)
	}
	defer m.Close()
	_, _, err = m.Lookup(context.Background(), []string{"example.com"})
	if err == nil {
		t.Fatal("want a connection error")
	}
	noPassword(t, err)
}

func TestMySQLCheck(t *testing.T) {
	db := mariadb.Shared(t)
	ctx := context.Background()
	tests := []struct {
		name, dsn, query, want string
	}{
		{"good", db.DSN(""), routesQuery, ""},
		{"no such table", db.DSN(""), "SELECT server FROM nosuch WHERE pattern = ?", "nosuch"},
		{"syntax", db.DSN(""), "SELEC server FROM routes WHERE pattern = ?", "syntax"},
		{"no such column", db.DSN(""), "SELECT srv FROM routes WHERE pattern = ?", "srv"},
		{"bad password", strings.Replace(db.DSN(""), mariadb.Password, "wrong-"+mariadb.Password, 1), routesQuery, "Access denied"},
		{"no such user", strings.Replace(db.DSN(""), mariadb.User+":", "mallory:", 1), routesQuery, "Access denied"},
		{"no such database", strings.Replace(db.DSN(""), "/mail", "/nomail", 1), routesQuery, "nomail"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := newMySQLMapping(tc.dsn, tc.query)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			_, err = m.Check(ctx)
			noPassword(t, err)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			// The same fault stops a lookup too.
			_, _, err = m.Lookup(ctx, []string{"example.com"})
			if err == nil {
				t.Fatal("lookup: want an error")
			}
			noPassword(t, err)
		})
	}
}

// TestMySQLServerStops: the database going away mid-session is an error,
// never a fall-through to the static mapping after it.
func TestMySQLServerStops(t *testing.T) {
	db := mariadb.Own(t)
	ch := mysqlChain(t, db.DSN("timeout=1s&readTimeout=1s"), routesQuery)
	ctx := context.Background()
	if r, err := ch.Route(ctx, "alice@example.com", ""); err != nil || r.Key != "alice@example.com" {
		t.Fatalf("before: %v %v", r, err)
	}
	db.Stop()
	for _, addr := range []string{"alice@example.com", "bob@nowhere.test"} {
		start := time.Now()
		r, err := ch.Route(ctx, addr, "")
		var le *lookupError
		if !errors.As(err, &le) {
			t.Fatalf("%s after stop: got %v %v, want a lookup error", addr, r, err)
		}
		noPassword(t, err)
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("took %v", took)
		}
	}
}

// BenchmarkMySQLLookup: what one connection pays to route one recipient
// whose domain matches (connect, prepare, two queries), and a further
// recipient on the same connection.
func BenchmarkMySQLLookup(b *testing.B) {
	db := mariadb.Shared(b)
	keys := lookupKeys("someone@example.com", "")
	b.Run("fresh", func(b *testing.B) {
		for b.Loop() {
			m, _ := newMySQLMapping(db.DSN(""), routesQuery)
			if key, _, err := m.Lookup(context.Background(), keys); err != nil || key != "example.com" {
				b.Fatal(key, err)
			}
			m.Close()
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/conn")
	})
	b.Run("again", func(b *testing.B) {
		m, _ := newMySQLMapping(db.DSN(""), routesQuery)
		defer m.Close()
		for b.Loop() {
			if key, _, err := m.Lookup(context.Background(), keys); err != nil || key != "example.com" {
				b.Fatal(key, err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/lookup")
	})
}

var _ = mysql.ParseDSN // the driver registers itself as "mysql" for database/sql
