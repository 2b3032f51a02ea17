package main

import (
	"testing"

	"willi/internal/smtptest"
)

// deadPort returns a loopback port on which nothing listens (connections are
// refused): one that was free a moment ago.
func deadPort(t testing.TB) int {
	t.Helper()
	return smtptest.FreePort(t)
}
