package test

import (
	"bufio"
	"bytes"
	"cmp"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"willi/internal/smtptest"
)

// TestCSVIndexFiftyProcesses: 50 willi processes start at once on a
// million-row CSV changed since its index was built. Every one must route by
// the new file (from a scan: none may trust the stale index), one of them
// rebuilds the index, and the process after them answers from it.
func TestCSVIndexFiftyProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("50 processes scanning a 50 MB file")
	}
	bin := buildWilli(t)
	dir := t.TempDir()
	p := filepath.Join(t.TempDir(), "routes.csv")
	genRoutes(t, p, 1_000_000)
	cfg := writeConfig(t, dir, fmt.Sprintf("hostname = \"mx.test\"\nindex_dir = \"cache\"\n[[mapping]]\ntype = \"csv\"\nfile = %q\n", p))
	if out, err := exec.Command(bin, "check", "-config", cfg).CombinedOutput(); err != nil || !strings.Contains(string(out), ": no index yet, rebuilt (1000000 patterns") {
		t.Fatalf("check: %v\n%s", err, out)
	}

	// The change: a new first row (the first row of a pattern wins), the
	// file replaced by rename as an editor or a deploy would.
	old, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	header := bytes.IndexByte(old, '\n') + 1
	changed := append(append(old[:header:header], "user123456@d12345.example,changed.internal:2525\n"...), old[header:]...)
	if err := os.WriteFile(p+".new", changed, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p+".new", p); err != nil {
		t.Fatal(err)
	}

	want := []struct{ addr, line string }{
		{"user123456@d12345.example", "user123456@d12345.example -> changed.internal:2525 (mapping csv:" + p + ", key user123456@d12345.example; csv:" + p + " "},
		{"user999999@d99999.example", "user999999@d99999.example -> mx0.internal:2525 backup.internal:25 (mapping csv:" + p + ", key user999999@d99999.example; csv:" + p + " "},
		{"x@d12345.example", "x@d12345.example -> mx5.internal:25 (mapping csv:" + p + ", key d12345.example; csv:" + p + " "},
	}
	cmds := make([]*exec.Cmd, 50)
	outs := make([]bytes.Buffer, 50)
	for i := range cmds {
		cmds[i] = exec.Command(bin, "lookup", "-config", cfg, want[i%len(want)].addr)
		cmds[i].Env = append(os.Environ(), "GOMAXPROCS=1")
		cmds[i].Stdout, cmds[i].Stderr = &outs[i], &outs[i]
	}
	for _, c := range cmds {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}
	rebuilt, waited := 0, 0
	for i, c := range cmds {
		err := c.Wait()
		out := outs[i].String()
		if err != nil || !strings.HasPrefix(out, want[i%len(want)].line+"by scan: index stale, ") || strings.Contains(out, "rebuild failed") {
			t.Errorf("process %d: %v\n%s", i, err, out)
		}
		switch {
		case strings.Contains(out, "index stale, rebuilding the index"):
			rebuilt++
		case strings.Contains(out, "index stale, another process is rebuilding the index"):
			waited++
		}
	}
	// The lock: some process rebuilt, the others found it taken; a lock
	// that never holds would have all 50 rebuild over each other.
	if rebuilt < 1 || waited < 1 || rebuilt+waited != 50 {
		t.Errorf("%d processes rebuilt the index, %d found another at it; want at least one each, 50 in all", rebuilt, waited)
	}
	if tmp, _ := filepath.Glob(filepath.Join(dir, "cache", "*.tmp")); len(tmp) > 0 {
		t.Errorf("temporary index files left: %v", tmp)
	}
	t.Logf("%d of 50 processes rebuilt the index, one after another", rebuilt)
	out, err := exec.Command(bin, "lookup", "-config", cfg, want[0].addr).CombinedOutput()
	if err != nil || string(out) != want[0].line+"from index)\n" {
		t.Errorf("after the rebuild: %v\n%s", err, out)
	}
}

// TestCSVIndexSessionRebuilds: a session that finds the index missing
// routes by scanning, and its process rebuilds the index before it exits,
// after the client has its replies; the next process answers from it.
func TestCSVIndexSessionRebuilds(t *testing.T) {
	if testing.Short() {
		t.Skip("a 50 MB file")
	}
	bin := buildWilli(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "routes.csv")
	genRoutes(t, p, 1_000_000)
	f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "rcpt@route.test,127.0.0.1:%d\n", deadPort(t))
	f.Close()
	cfg := writeConfig(t, dir, fmt.Sprintf("hostname = \"mx.test\"\nindex_dir = \"cache\"\n[[mapping]]\ntype = \"csv\"\nfile = %q\n", p))
	w := startWilliPipes(t, bin, cfg, "GOMAXPROCS=1")
	c := smtptest.NewClient(t, w.Conn)
	c.Expect(220)
	c.Send("EHLO client.test")
	c.Expect(250)
	c.Send("MAIL FROM:<a@client.test>")
	c.Expect(250)
	c.Send("RCPT TO:<rcpt@route.test>")
	if r, _ := c.ReadReply(); r.Code != 451 { // routed by the scan; the upstream is down
		t.Fatalf("RCPT: %v", r)
	}
	c.Send("QUIT")
	c.Expect(221)
	w.Conn.Close()
	if code, err := w.Wait(2 * time.Minute); code != 0 || err != nil {
		t.Fatalf("willi: exit %d, %v", code, err)
	}
	out, err := exec.Command(bin, "lookup", "-config", cfg, "rcpt@route.test").CombinedOutput()
	if err != nil || !strings.HasSuffix(string(out), " from index)\n") {
		t.Errorf("after the session: %v\n%s", err, out)
	}
}

// TestCSVIndexFolderUnusable: an index folder willi cannot create or write
// in costs one warning per process, not one per lookup, and every lookup is
// answered by scanning.
func TestCSVIndexFolderUnusable(t *testing.T) {
	bin := buildWilli(t)
	dir := t.TempDir()
	for _, f := range []string{"a.csv", "b.csv"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("pattern,server\n"+strings.TrimSuffix(f, ".csv")+".org,mx-"+f+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "file"), nil, 0o644)
	folders := map[string]string{"under a file": filepath.Join(dir, "file", "cache")}
	if os.Geteuid() != 0 { // root writes anywhere
		ro := filepath.Join(dir, "ro")
		os.Mkdir(ro, 0o500)
		folders["read-only"] = ro
	}
	for name, folder := range folders {
		t.Run(name, func(t *testing.T) {
			cfg := writeConfig(t, dir, fmt.Sprintf("hostname = \"mx.test\"\nindex_dir = %q\n[[mapping]]\ntype = \"csv\"\nfile = \"a.csv\"\n[[mapping]]\ntype = \"csv\"\nfile = \"b.csv\"\n", folder))
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(bin, "lookup", "-config", cfg, "x@a.org", "y@b.org", "z@c.org", "w@b.org")
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			cmd.Run()
			for _, w := range []string{"x@a.org -> mx-a.csv:25 (", "y@b.org -> mx-b.csv:25 (", "z@c.org: no route (", "w@b.org -> mx-b.csv:25 ("} {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("no line %q in\n%s", w, stdout.String())
				}
			}
			if n := strings.Count(stdout.String(), "index folder not usable)") + strings.Count(stdout.String(), "index folder not usable;"); n != 7 {
				t.Errorf("%d lookups say they scanned because of the folder, want 7:\n%s", n, stdout.String())
			}
			if lines := strings.Split(strings.TrimSpace(stderr.String()), "\n"); len(lines) != 1 || !strings.Contains(lines[0], "level=WARN msg=\"csv index folder not usable, csv mappings are scanned\"") {
				t.Errorf("want one warning, got:\n%s", stderr.String())
			}
		})
	}
}

// genRoutes writes n rows: every tenth a domain route, the others address
// routes (the layout of the root package's csv_test.go and bench/csv.sh).
func genRoutes(t testing.TB, p string, n int) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	fmt.Fprintln(w, "pattern,server")
	for i := range n {
		if i%10 == 0 {
			fmt.Fprintf(w, "d%d.example,mx%d.internal:25\n", i/10, i%7)
		} else {
			fmt.Fprintf(w, "user%d@d%d.example,mx%d.internal:2525 backup.internal\n", i, i/10, i%7)
		}
	}
	if err := cmp.Or(w.Flush(), f.Close()); err != nil {
		t.Fatal(err)
	}
}
