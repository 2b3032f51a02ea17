package test

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestBenchContainerSmoke runs the bench's container columns
// (BENCH_CONTAINER=only bench/run.sh) in quick mode: the harness boots the
// test container, installs the release, and every column serves every
// load. It asserts nothing about speed.
func TestBenchContainerSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("boots the systemd test container")
	}
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "bench/run.sh")
	cmd.Env = append(os.Environ(), "BENCH_CONTAINER=only", "BENCH_QUICK=1", "BENCH_OUT="+t.TempDir())
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	output, err := cmd.CombinedOutput()
	t.Logf("BENCH_CONTAINER=only bench/run.sh took %s:\n%s", time.Since(start).Round(time.Millisecond), output)
	if err != nil {
		t.Fatalf("bench/run.sh: %v", err)
	}
	if !regexp.MustCompile(`(?m)^container \(medians\)\s+ssa\s+unit\s+serve$`).Match(output) {
		t.Error("no container table header")
	}
	// Every column served every load: a rate, a slowest banner and an
	// exposure above zero. How many of the 200 got their banner within 2 s
	// is a figure, not a pass mark (the per-connection unit may show 0).
	nonZero := `[0-9.]*[1-9][0-9.]*`
	for row, column := range map[string]string{
		"sessions/s, 1 client":              nonZero,
		"sessions/s, 20 clients":            nonZero,
		"of 200 at once: slowest banner ms": nonZero,
		"of 200 at once: banner <= 2 s":     `[0-9]+`,
	} {
		re := `(?m)^` + regexp.QuoteMeta(row) + strings.Repeat(`\s+`+column, 3) + `$`
		if !regexp.MustCompile(re).Match(output) {
			t.Errorf("table row %q missing or empty", row)
		}
	}
	re := `(?m)^systemd-analyze security\s+-` + strings.Repeat(`\s+`+nonZero, 2) + `$`
	if !regexp.MustCompile(re).Match(output) {
		t.Error("table row \"systemd-analyze security\" missing or empty")
	}
}
