package test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"willi/internal/smtptest"
)

// TestServeReloadUpgrades: SIGHUP re-executes the program now at willi
// serve's path as the same process. The listening socket stays open, a
// session in progress goes on to deliver its message and is reaped by the
// new program, new connections are served by it, and a config that does
// not load leaves the running program serving.
func TestServeReloadUpgrades(t *testing.T) {
	sink, dump := startSMTPSink(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "willi")
	deployCopy(t, buildWilli(t), bin)
	conf := serveRoutedConfig(t, sink)
	p := startServeBin(t, bin, conf, "-grace", "30s")
	pid := p.Cmd.Process.Pid

	held := dialSMTP(t, p.Addr, "")
	held.Expect(220)
	held.Want250("EHLO client.test", "MAIL FROM:<held@sender.test>", "RCPT TO:<held@example.com>")
	kids := serveChildren(pid)
	if len(kids) != 1 {
		t.Fatalf("want one child for the held session, have %v", kids)
	}

	// The upgrade: another build renamed over the program file.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-ldflags", "-X main.version=reloaded-test", "-o", bin+".new", ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	os.Chmod(bin+".new", 0o755)
	if err := os.Rename(bin+".new", bin); err != nil {
		t.Fatal(err)
	}
	p.Cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog(t, `msg=listening .*pid=`+strconv.Itoa(pid)+` version=reloaded-test sessions_taken_over=1`, 1, 10*time.Second)
	select {
	case <-p.done:
		t.Fatal("willi serve exited on SIGHUP")
	default:
	}
	// New sessions, served by the new program.
	for i := range 3 {
		if err := serveSendOne(p.Addr, "127.0.0.1", "after reload "+strconv.Itoa(i)); err != nil {
			t.Error(err)
		}
	}
	// The held session goes on to the end, and the new program reaps it.
	if r := held.Data(smtptest.DotStuff([]byte("Subject: held over the reload\r\n\r\nDelivered.\r\n"))); r.Code != 250 {
		t.Fatalf("end of data of the held session: %q", r.Lines)
	}
	if r := held.Cmd("QUIT"); r.Code != 221 {
		t.Fatalf("QUIT: %q", r.Lines)
	}
	p.waitLog(t, `msg="child exited" component=serve pid=`+strconv.Itoa(kids[0])+` `, 1, 10*time.Second)
	if _, err := os.Stat("/proc/" + strconv.Itoa(kids[0])); err == nil {
		t.Errorf("the held session's process %d is still there (not reaped)", kids[0])
	}
	msgs := readSinkMessages(t, dump, 4, 10*time.Second)
	subjects := ""
	for _, m := range msgs {
		subjects += string(m.Data)
	}
	if !strings.Contains(subjects, "Subject: held over the reload") {
		t.Errorf("the held session's message was not delivered")
	}

	// A config that does not load: the running program serves on.
	good, _ := os.ReadFile(conf)
	os.WriteFile(conf, []byte("hostname = \n"), 0o644)
	p.Cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog(t, `msg="reload failed; serving on"`, 1, 10*time.Second)
	os.WriteFile(conf, good, 0o644)
	if err := serveSendOne(p.Addr, "127.0.0.1", "after a failed reload"); err != nil {
		t.Error(err)
	}
	if bytes.Count([]byte(p.log()), []byte("msg=listening")) != 2 {
		t.Errorf("want two starts (the first and one reload):\n%s", p.log())
	}

	p.Cmd.Process.Signal(syscall.SIGTERM)
	if st := p.wait(t, 20*time.Second); st != 0 {
		t.Errorf("willi serve exit status %d, want 0", st)
	}
}
