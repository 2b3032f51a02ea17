package main

import (
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTransactionLogAbandoned: a transaction that ends without DATA (RSET,
// QUIT, the client gone) still gets its one info line, and only one.
func TestTransactionLogAbandoned(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "routes.csv"), []byte("pattern,server\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := parseConfig("hostname = \"mx.test\"\n[[mapping]]\ntype = \"csv\"\nfile = \"routes.csv\"\n",
		filepath.Join(dir, "willi.conf"))
	if err != nil {
		t.Fatal(err)
	}
	srv, cli := net.Pipe()
	defer cli.Close()
	var logBuf syncBuffer
	s := newSession(cfg, srv, slog.New(slog.NewTextHandler(&logBuf, nil)))
	for _, c := range []struct{ line, want string }{
		{"EHLO client.example", "250"},
		{"MAIL FROM:<first@sender.example>", "250"},
		{"RCPT TO:<x@nowhere.example>", "550"},
		{"RSET", "250"},
		{"RSET", "250"},
		{"MAIL FROM:<second@sender.example>", "250"},
	} {
		if r := s.dispatch(c.line); r == nil || !strings.HasPrefix(r.Error(), c.want) {
			t.Fatalf("%s: %v, want %s", c.line, r, c.want)
		}
	}
	s.finish()
	var tx []string
	for _, l := range strings.Split(logBuf.String(), "\n") {
		if strings.Contains(l, "msg=transaction") {
			tx = append(tx, l)
		}
	}
	if len(tx) != 2 {
		t.Fatalf("want 2 transaction lines, got %d:\n%s", len(tx), logBuf.String())
	}
	for i, from := range []string{"first@sender.example", "second@sender.example"} {
		if !strings.Contains(tx[i], "from="+from) || !strings.Contains(tx[i], "result=abandoned") {
			t.Errorf("transaction line %d: %s", i+1, tx[i])
		}
	}
}
