package test

// willi serve's own features, on the built binary: sessions never as root,
// the stress timeout, and the listening socket passed by systemd.

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"willi/internal/smtptest"
)

// TestServeSessionsRunAsUser: started as root with -user nobody, every
// session process runs as nobody (uid and gid), never as root.
func TestServeSessionsRunAsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start sessions as another user (CI runs as root)")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	sink, _ := startSMTPSink(t)
	p := startServe(t, serveRoutedConfig(t, sink)) // as root: -user nobody
	c := dialSMTP(t, p.Addr, "127.0.0.1")
	c.Expect(220)
	kids := serveChildren(p.Cmd.Process.Pid)
	if len(kids) != 1 {
		t.Fatalf("%d children for one session", len(kids))
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", kids[0]))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		f := strings.Fields(l)
		if len(f) == 5 && (f[0] == "Uid:" || f[0] == "Gid:") {
			want := nobody.Uid
			if f[0] == "Gid:" {
				want = nobody.Gid
			}
			for _, id := range f[1:] { // real, effective, saved, filesystem
				if id != want {
					t.Errorf("session %s %v, want all %s (nobody)", f[0], f[1:], want)
					break
				}
			}
		}
		if len(f) >= 1 && f[0] == "Groups:" && len(f) > 1 {
			for _, g := range f[1:] {
				if g == "0" {
					t.Errorf("session keeps root's group: %s", l)
				}
			}
		}
	}
	// And it works: a message goes through as nobody.
	c.Want250("EHLO client.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.com>")
	if r := c.Data([]byte("Subject: as nobody\r\n\r\nhi\r\n")); r.Code != 250 {
		t.Fatalf("DATA: %q", r.Lines)
	}
	c.Cmd("QUIT")
}

// TestServeStressTimeout: from -stress-at sessions on, a new session gets
// -stress-timeout until MAIL FROM; sessions started before, and sessions
// in a transaction, keep command_timeout.
func TestServeStressTimeout(t *testing.T) {
	sink, _ := startSMTPSink(t)
	p := startServe(t, serveRoutedConfig(t, sink), "-max-conn", "10", "-stress-at", "2", "-stress-timeout", "1s")

	calm := dialSMTP(t, p.Addr, "127.0.0.1") // 1 session: no stress
	calm.Expect(220)
	idle := dialSMTP(t, p.Addr, "127.0.0.2") // 2: under stress, stays silent
	idle.Expect(220)
	inTx := dialSMTP(t, p.Addr, "127.0.0.3") // 3: under stress, starts a transaction
	inTx.Expect(220)
	inTx.Want250("EHLO client.example", "MAIL FROM:<a@example.org>")

	start := time.Now()
	r, err := idle.ReadReply()
	if err != nil || r.Code != 421 || !strings.Contains(r.Lines[0], "4.4.2") {
		t.Fatalf("silent session under stress: %q %v, want 421 4.4.2", r.Lines, err)
	}
	if waited := time.Since(start); waited > 20*time.Second {
		t.Errorf("the stress timeout took %v", waited)
	}
	// Well past the stress timeout: the others are still served.
	time.Sleep(1500 * time.Millisecond)
	if r := calm.Cmd("NOOP"); r.Code != 250 {
		t.Errorf("session started before stress: NOOP %q", r.Lines)
	}
	if r := inTx.Cmd("RCPT TO:<b@example.com>"); r.Code != 250 {
		t.Errorf("session in a transaction under stress: RCPT %q", r.Lines)
	}
	calm.Cmd("QUIT")
	inTx.Cmd("QUIT")
}

// TestServeSystemdSocket: without -listen, willi serve takes the listening
// socket systemd passes (LISTEN_FDS, Accept=no), here from
// systemd-socket-activate, and serves sessions on it.
func TestServeSystemdSocket(t *testing.T) {
	ssa, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Fatalf("systemd-socket-activate is missing (run test/deps.sh): %v", err)
	}
	bin := buildWilli(t)
	sink, _ := startSMTPSink(t)
	conf := serveRoutedConfig(t, sink)
	addr := fmt.Sprintf("127.0.0.1:%d", smtptest.FreePort(t))
	logPath := filepath.Join(t.TempDir(), "serve.log")
	lf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	args := append([]string{"-l", addr, bin, "serve", "-config", conf}, serveUserArgs(t, bin, conf)...)
	cmd := exec.Command(ssa, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(40 * time.Second):
			cmd.Process.Kill()
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("log:\n%s", b)
		}
	}()
	for deadline := time.Now().Add(10 * time.Second); !tcpListening(addr); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("systemd-socket-activate did not listen")
		}
	}
	// Two sessions one after the other: the one willi serve keeps the socket.
	for i := range 2 {
		c := dialSMTP(t, addr, "127.0.0.1")
		if r := c.Expect(220); !strings.Contains(r.Lines[0], "willi.test") {
			t.Errorf("banner %q", r.Lines[0])
		}
		c.Want250("EHLO client.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.com>")
		if r := c.Data([]byte("Subject: " + strconv.Itoa(i) + "\r\n\r\nhi\r\n")); r.Code != 250 {
			t.Fatalf("DATA: %q", r.Lines)
		}
		c.Cmd("QUIT")
	}
	b, _ := os.ReadFile(logPath)
	if !strings.Contains(string(b), "systemd_socket=true") {
		t.Errorf("willi serve did not report the systemd socket:\n%s", b)
	}
	if n := strings.Count(string(b), `msg="child exited"`); n > 2 {
		t.Errorf("%d children", n)
	}
}
