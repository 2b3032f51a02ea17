package test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// TestBenchSmoke runs the benchmark harness in its quick mode: every load
// against every target once, small. It checks that the harness works and that
// smtp-sink received every message sent through willi and nginx; it asserts
// nothing about speed (shared machines are too noisy for that).
func TestBenchSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts smtp-sink, nginx and several launchers")
	}
	for _, prog := range []string{"bash", "smtp-source", "smtp-sink", "systemd-socket-activate", "nginx"} {
		if _, err := exec.LookPath(prog); err != nil {
			if _, err := os.Stat(filepath.Join("/usr/sbin", prog)); err != nil {
				t.Fatalf("%s is missing; install the peers with test/deps.sh", prog)
			}
		}
	}
	out := t.TempDir()
	// Run as root, the harness runs willi serve's sessions as nobody, who
	// must reach the binary and config it builds there (TempDir is 0700).
	for _, d := range []string{out, filepath.Dir(out)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "bench/run.sh")
	// The container columns have their own smoke test (TestBenchContainerSmoke).
	cmd.Env = append(os.Environ(), "BENCH_QUICK=1", "BENCH_OUT="+out, "BENCH_RUNS=1", "BENCH_CONTAINER=0")
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	output, err := cmd.CombinedOutput()
	t.Logf("bench/run.sh (BENCH_QUICK=1) took %s:\n%s", time.Since(start).Round(time.Millisecond), output)
	if err != nil {
		t.Fatalf("bench/run.sh: %v", err)
	}
	m := regexp.MustCompile(`(?m)^sink: all (\d+) messages received$`).FindSubmatch(output)
	if m == nil {
		t.Fatal("the harness did not report that the sink received every message")
	}
	if n, _ := strconv.Atoi(string(m[1])); n == 0 {
		t.Fatal("the sink was expected to receive messages, the harness counted none")
	}
	for _, re := range []string{`(?m)^FAIL: `, `(?m)^sink/loads: `} {
		if loc := regexp.MustCompile(re).FindIndex(output); loc != nil {
			t.Errorf("harness reported a failure at %q", output[loc[0]:min(len(output), loc[0]+200)])
		}
	}
	for _, col := range []string{"sessions/s, 1 msg/session", "msgs/s, 10 msgs/session", "connect-to-banner ms", "private KiB per idle conn"} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(col)).Match(output) {
			t.Errorf("table row %q missing", col)
		}
	}
	header := regexp.MustCompile(`(?m)^metric .*$`).Find(output)
	for _, target := range []string{"direct", "floor", "deps", "pipe", "willi", "serve", "nginx"} {
		if !regexp.MustCompile(`\b` + target + `\b`).Match(header) {
			t.Errorf("table header %q lacks the %s column", header, target)
		}
	}
}
