package main

import (
	"net"
	"slices"
	"testing"
)

func TestServeChildEnv(t *testing.T) {
	env := serveChildEnv([]string{"PATH=/bin", "LISTEN_FDS=1", "LISTEN_PID=7", "LISTEN_FDNAMES=x", "REMOTE_ADDR=9.9.9.9", "HOME=/root"}, "2001:db8::1", 4242)
	want := []string{"PATH=/bin", "HOME=/root", "GOMAXPROCS=1", "REMOTE_ADDR=2001:db8::1", "REMOTE_PORT=4242"}
	if !slices.Equal(env, want) {
		t.Errorf("serveChildEnv = %q, want %q", env, want)
	}
	env = serveChildEnv([]string{"GOMAXPROCS=4"}, "192.0.2.1", 25)
	want = []string{"GOMAXPROCS=4", "REMOTE_ADDR=192.0.2.1", "REMOTE_PORT=25"}
	if !slices.Equal(env, want) {
		t.Errorf("serveChildEnv = %q, want %q", env, want)
	}
	for _, tc := range []struct {
		addr net.Addr
		ip   string
		port int
	}{
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 25}, "192.0.2.1", 25},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.1"), Port: 26}, "192.0.2.1", 26},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 27}, "2001:db8::1", 27},
	} {
		if ip, port := serveSource(tc.addr); ip != tc.ip || port != tc.port {
			t.Errorf("serveSource(%v) = %s %d, want %s %d", tc.addr, ip, port, tc.ip, tc.port)
		}
	}
}
