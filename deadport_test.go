package main

import (
	"net"
	"testing"
)

// deadPort returns a loopback port on which nothing listens (connections are
// refused): one that was free a moment ago.
func deadPort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("deadPort: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
