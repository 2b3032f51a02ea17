package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"testing"
)

// TestMain keeps what a fuzz worker prints when it dies. Go's fuzz
// coordinator discards its workers' output, so a fatal error in one (a
// fault outside a recover, a concurrent map write) shows only as "fuzzing
// process hung or terminated unexpectedly"; test/run.sh prints these files
// when a target fails.
func TestMain(m *testing.M) {
	if !slices.Contains(os.Args[1:], "-test.fuzzworker") {
		os.Exit(m.Run())
	}
	name := filepath.Join(os.TempDir(), fmt.Sprintf("willi-fuzz-crash-%d.txt", os.Getpid()))
	if f, err := os.Create(name); err == nil {
		debug.SetCrashOutput(f, debug.CrashOptions{})
		f.Close()
	}
	code := m.Run()
	os.Remove(name) // no crash
	os.Exit(code)
}
