package main

import (
	"bufio"
	"context"
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
	// An abandoned transaction keeps its recipients, each with the code
	// the client got; every refused recipient is logged with the reply.
	if !strings.Contains(tx[0], "rcpts=x@nowhere.example:550 ") {
		t.Errorf("transaction line without its recipient: %s", tx[0])
	}
	if !strings.Contains(logBuf.String(), `level=INFO msg="recipient refused" rcpt=x@nowhere.example reply="550 5.7.1 <x@nowhere.example>: Relay access denied"`) {
		t.Errorf("no info line for the refused recipient:\n%s", logBuf.String())
	}
}

// TestTransactionLogDelivered: a delivered message's transaction is logged
// once, with the upstream's verdict.
func TestTransactionLogDelivered(t *testing.T) {
	dir := t.TempDir()
	cfg, err := parseConfig("hostname = \"mx.test\"\ncommand_timeout = \"5s\"\nupstream_command_timeout = \"5s\"\n"+
		"[[mapping]]\ntype = \"static\"\nserver = \"up.test:25\"\n", filepath.Join(dir, "willi.conf"))
	if err != nil {
		t.Fatal(err)
	}
	srv, cli := net.Pipe()
	defer cli.Close()
	go func() { // the client side: willi's replies are read and dropped
		b := make([]byte, 4096)
		for {
			if _, err := cli.Read(b); err != nil {
				return
			}
		}
	}()
	var logBuf syncBuffer
	s := newSession(cfg, srv, slog.New(slog.NewTextHandler(&logBuf, nil)))
	s.dial = func(context.Context, string, string) (net.Conn, error) {
		a, b := net.Pipe()
		go fakeAcceptingUpstream(b)
		return a, nil
	}
	for _, line := range []string{"EHLO client.example", "MAIL FROM:<a@sender.example>", "RCPT TO:<b@rcpt.example>"} {
		if r := s.dispatch(line); r.Code != 250 {
			t.Fatalf("%s: %v", line, r)
		}
	}
	go cli.Write([]byte("Subject: x\r\n\r\nbody\r\n.\r\n"))
	if r := s.dispatch("DATA"); r.Code != 250 {
		t.Fatalf("DATA: %v", r)
	}
	s.finish()
	if n := strings.Count(logBuf.String(), "msg=transaction"); n != 1 {
		t.Fatalf("want 1 transaction line, got %d:\n%s", n, logBuf.String())
	}
	if !strings.Contains(logBuf.String(), `result="250 2.0.0 Ok: queued"`) {
		t.Errorf("transaction line without the verdict:\n%s", logBuf.String())
	}
}

// fakeAcceptingUpstream accepts everything on c: 220, 250 to each command,
// 354 to DATA and 250 after the end of data.
func fakeAcceptingUpstream(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	c.Write([]byte("220 up.test ESMTP\r\n"))
	inData := false
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return
		}
		switch {
		case inData && l == ".\r\n":
			inData = false
			c.Write([]byte("250 2.0.0 Ok: queued\r\n"))
		case inData:
		case strings.HasPrefix(l, "DATA"):
			inData = true
			c.Write([]byte("354 go ahead\r\n"))
		case strings.HasPrefix(l, "QUIT"):
			c.Write([]byte("221 2.0.0 Bye\r\n"))
			return
		default:
			c.Write([]byte("250 2.0.0 Ok\r\n"))
		}
	}
}
