package main

import (
	"bufio"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestServeSourceKey(t *testing.T) {
	for _, tc := range []struct{ ip, key string }{
		{"192.0.2.1", "192.0.2.1"},
		{"192.0.2.2", "192.0.2.2"},
		// One IPv6 site or host: its /64.
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
		{"2001:db8:1:2::ffff", "2001:db8:1:2::/64"},
		{"2001:db8:1:3::1", "2001:db8:1:3::/64"},
		{"::1", "::/64"},
		{"not-an-address", "not-an-address"},
	} {
		if got := sourceKey(tc.ip); got != tc.key {
			t.Errorf("sourceKey(%s) = %s, want %s", tc.ip, got, tc.key)
		}
	}
}

func TestServeAdmit(t *testing.T) {
	s := &server{opts: serveOptions{maxConn: 4, maxPerSource: 2, stressAt: 3}, perSource: map[string]int{}}
	a, b := sourceKey("2001:db8::1"), sourceKey("2001:db8::2") // the same /64
	c := sourceKey("192.0.2.7")
	admit := func(key string, wantRefusal *refusal, wantStress bool) {
		t.Helper()
		r, stressed := s.admit(key)
		if r != wantRefusal || stressed != wantStress {
			t.Errorf("admit(%s) = %v %v, want %v %v", key, r, stressed, wantRefusal, wantStress)
		}
	}
	admit(a, nil, false)
	admit(b, nil, false)              // second from the /64
	admit(a, &refusePerSource, false) // third from the /64: 4.7.0
	admit(c, nil, true)               // third session: stress from here on
	admit(sourceKey("192.0.2.8"), nil, true)
	admit(sourceKey("192.0.2.9"), &refuseBusy, false) // the cap: 4.3.2
	if s.total != 4 || s.perSource[a] != 2 {
		t.Fatalf("counts after refusals: total %d, /64 %d", s.total, s.perSource[a])
	}
	s.release(a)
	admit(b, nil, true) // a slot of the /64 is free again
	s.release(a)
	s.release(b)
	s.release(c)
	s.release(sourceKey("192.0.2.8"))
	if s.total != 0 || len(s.perSource) != 0 {
		t.Errorf("after releasing all: total %d, per source %v", s.total, s.perSource)
	}
	admit(c, nil, false) // out of stress again
}

// TestServeRefuseReply: the 421 carries the enhanced code and the server's
// name, ends in CRLF, and the connection is closed after it.
func TestServeRefuseReply(t *testing.T) {
	for _, r := range []refusal{refusePerSource, refuseBusy, refuseUnavailable} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		server, err := ln.Accept()
		ln.Close()
		if err != nil {
			t.Fatal(err)
		}
		go serveRefuse(server, "mx.example.com", r)
		client.SetReadDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(client)
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		want := r.code + " mx.example.com "
		if !strings.HasPrefix(line, want) || !strings.HasSuffix(line, "\r\n") || strings.Count(line, "\n") != 1 {
			t.Errorf("refusal %q, want a line starting %q", line, want)
		}
		if _, err := br.ReadByte(); err == nil {
			t.Errorf("%s: more after the 421", r.code)
		}
		client.Close()
	}
	if refusePerSource.code != "421 4.7.0" || refuseBusy.code != "421 4.3.2" {
		t.Errorf("codes: per source %q, busy %q", refusePerSource.code, refuseBusy.code)
	}
}

// TestServeChildNotStarted: a connection whose child cannot be started
// (here its program is missing; under TasksMax, fork fails) is answered
// 421 4.3.0, promptly, and its slot is given back.
func TestServeChildNotStarted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := &server{opts: serveOptions{maxConn: 10, maxPerSource: 10, stressAt: 10, config: "/dev/null"},
		exe: filepath.Join(t.TempDir(), "missing"), log: slog.New(slog.DiscardHandler),
		hostname: "mx.example.com", perSource: map[string]int{}, children: map[int]*child{}}
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	s.handle(conn.(*net.TCPConn))
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(client).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "421 4.3.0 mx.example.com ") {
		t.Errorf("got %q %v, want 421 4.3.0", line, err)
	}
	if s.active() != 0 || len(s.children) != 0 {
		t.Errorf("after the refusal: %d active, children %v", s.active(), s.children)
	}
}
