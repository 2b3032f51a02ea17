package main

// Class 8, in-process: a panic inside a session becomes 421. (The process
// limits of the built binary are tested in test/.)

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"
)

// TestHardeningPanic: a panic inside a session, before and after an
// upstream connection exists, becomes 421 4.3.0 and the session ends (the
// process then exits, which closes any upstream connection still open).
func TestHardeningPanic(t *testing.T) {
	for _, c := range []struct {
		name, in, out string
		up            upScript
		ups           []string
	}{
		{name: "in the dial", in: hEnvIn + hQuit, out: hBanner + hEhlo + hMailOK + "421 4.3.0 Internal error, closing connection\r\n"},
		{name: "with an upstream open", up: upScript{"ext": hXC}, in: hEnvIn + hQuit,
			out: hBanner + hEhlo + hMailOK + "421 4.3.0 Internal error, closing connection\r\n", ups: []string{hUpEhlo}},
	} {
		t.Run(c.name, func(t *testing.T) {
			hc := hcase{name: c.name, up: c.up, in: c.in, out: c.out, ups: c.ups}
			cfg := hConfig(t, hc)
			f := newFakeUpstreams(t, c.up, nil)
			srv, cli := net.Pipe()
			log := &syncBuffer{}
			s := newSession(cfg, srv, slog.New(slog.NewTextHandler(log, nil)))
			s.clientIP, s.clientPort = net.ParseIP("192.0.2.1").To4(), 4321
			if c.ups == nil {
				s.dial = func(context.Context, string, string) (net.Conn, error) { panic("dial") }
			} else {
				s.dial = f.dial
			}
			s.lookupName = func(context.Context, net.IP) string { panic("lookup") }
			done := make(chan struct{})
			go func() {
				defer close(done)
				s.serve()
			}()
			go cli.Write([]byte(c.in))
			out, closed := hReadAll(cli, newHOutput())
			cli.Close()
			select {
			case <-done:
			case <-time.After(hWait):
				t.Fatal("session did not end after the panic")
			}
			if msg := hCheckReplies(out); msg != "" || !closed || out != c.out {
				t.Fatalf("%s (closed %v): client got %q, want %q\n%s", msg, closed, out, c.out, log)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(f.conns) != len(c.ups) {
				t.Fatalf("%d upstream connections, want %d", len(f.conns), len(c.ups))
			}
			for i, u := range f.conns {
				if got := u.String(); got != c.ups[i] {
					t.Fatalf("upstream got %q, want %q", got, c.ups[i])
				}
			}
		})
	}
}
