package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestProbeUsage: willi probe exits 2, saying why, when it has nothing it
// can probe: a config that does not load, an address with no route or of
// bad syntax, a config with no upstream in it. (0 and 1 are tested against
// real upstreams in test/probe_test.go.)
func TestProbeUsage(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	broken := write("broken.conf", "hostname = \n")
	csvOnly := write("csv.conf", "hostname = \"mx.test\"\n[[mapping]]\ntype = \"csv\"\nfile = \"routes.csv\"\n")
	write("routes.csv", "pattern,server\n")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"broken config", []string{"-config", broken}, broken},
		{"no upstream in the config", []string{"-config", csvOnly}, "no upstream to probe"},
		{"address without a route", []string{"-config", csvOnly, "a@nowhere.test"}, "a@nowhere.test"},
		{"bad address", []string{"-config", csvOnly, "a b@x"}, "invalid address"},
		{"bad flag", []string{"-bogus"}, ""},
	} {
		var out strings.Builder
		if got := runProbe(tc.args, &out); got != 2 || !strings.Contains(out.String(), tc.want) {
			t.Errorf("%s: exit %d, output %q; want 2 and %q", tc.name, got, out.String(), tc.want)
		}
	}
}
