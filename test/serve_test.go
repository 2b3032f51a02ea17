package test

// willi serve: the built binary accepting on loopback and starting one willi
// child per connection, with smtp-sink as the upstream.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"willi/internal/smtptest"
)

// serveProc is one running `willi serve`.
type serveProc struct {
	Addr    string
	Cmd     *exec.Cmd
	LogPath string
	done    chan struct{}
}

// startServe runs `willi serve -listen 127.0.0.1:PORT -config conf extra...`
// and waits until it listens. The cleanup stops it if the test did not.
func startServe(t testing.TB, conf string, extra ...string) *serveProc {
	t.Helper()
	return startServeBin(t, buildWilli(t), conf, extra...)
}

// startServeBin is startServe with the program at bin.
func startServeBin(t testing.TB, bin, conf string, extra ...string) *serveProc {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", smtptest.FreePort(t))
	p := &serveProc{Addr: addr, LogPath: filepath.Join(t.TempDir(), "serve.log"), done: make(chan struct{})}
	lf, err := os.Create(p.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"serve", "-listen", addr, "-config", conf}, serveUserArgs(t, bin, conf)...)
	p.Cmd = exec.Command(bin, append(args, extra...)...)
	p.Cmd.Stdout, p.Cmd.Stderr = lf, lf
	p.Cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.Cmd.Wait(); lf.Close(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.Cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(45 * time.Second):
				p.Cmd.Process.Kill()
				<-p.done
			}
		}
		log := tailFile(p.LogPath, 16<<10)
		if strings.Contains(log, "panic:") {
			t.Errorf("willi serve or a child panicked:\n%s", log)
		} else if t.Failed() {
			t.Logf("willi serve log:\n%s", log)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for !tcpListening(addr) {
		select {
		case <-p.done:
			t.Fatalf("willi serve exited at start:\n%s", tailFile(p.LogPath, 8<<10))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("willi serve did not listen on %s:\n%s", addr, tailFile(p.LogPath, 8<<10))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p
}

// wait waits up to timeout for willi serve to exit and returns its status.
func (p *serveProc) wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.Cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("willi serve still running after %v:\n%s", timeout, tailFile(p.LogPath, 8<<10))
		return -1
	}
}

// log returns what willi serve (and its children) logged so far.
func (p *serveProc) log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// waitLog waits until re matches at least n lines of the log.
func (p *serveProc) waitLog(t testing.TB, re string, n int, timeout time.Duration) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(timeout)
	for {
		var got []string
		for _, l := range strings.Split(p.log(), "\n") {
			if rx.MatchString(l) {
				got = append(got, l)
			}
		}
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("willi serve logged %d lines matching %s, want %d:\n%s", len(got), re, n, p.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// serveChildren lists the live processes whose parent is pid.
func serveChildren(pid int) []int {
	var kids []int
	for _, p := range liveProcesses() {
		if p.ppid == pid {
			kids = append(kids, p.pid)
		}
	}
	return kids
}

// serveAlive reports whether pid is a live (not zombie) process.
func serveAlive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && !strings.HasPrefix(strings.TrimSpace(s[i+1:]), "Z")
}

// serveUserArgs: as root (CI), sessions run as nobody, since willi serve
// never runs one as root; the binary and the test's files (paths and the
// folders above them) are then opened to all users.
func serveUserArgs(t testing.TB, paths ...string) []string {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	for _, p := range paths {
		for dir := filepath.Dir(p); dir != "/" && dir != "."; dir = filepath.Dir(dir) {
			if fi, err := os.Stat(dir); err == nil && fi.Mode().Perm()&0o005 != 0o005 {
				if err := os.Chmod(dir, fi.Mode().Perm()|0o755); err != nil {
					t.Fatal(err)
				}
			}
		}
		if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o004 == 0 {
			os.Chmod(p, fi.Mode().Perm()|0o444)
		}
	}
	return []string{"-user", "nobody"}
}

// serveRoutedConfig routes example.com to the sink.
func serveRoutedConfig(t testing.TB, sinkAddr string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "routes.csv"), []byte("pattern,server\nexample.com,"+sinkAddr+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return writeConfig(t, dir, "hostname = \"willi.test\"\n[[mapping]]\ntype = \"csv\"\nfile = \"routes.csv\"\n")
}

// serveExpectRefused reads a 421 with the enhanced code (4.7.0 per source,
// 4.3.2 busy) and the server's name, then the end of the connection.
func serveExpectRefused(t testing.TB, addr, src, code string) {
	t.Helper()
	c := dialSMTP(t, addr, src)
	r := c.Expect(421)
	if !strings.HasPrefix(r.Lines[0], "421 "+code+" willi.test ") {
		t.Errorf("refusal %q, want 421 %s willi.test ...", r.Lines[0], code)
	}
	c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := io.Copy(io.Discard, c.Conn); err != nil || n != 0 {
		t.Errorf("after the 421: %d more bytes, %v; want the connection closed", n, err)
	}
}

func TestServeRelaysMessages(t *testing.T) {
	sink, dump := startSMTPSink(t)
	p := startServe(t, serveRoutedConfig(t, sink))

	// Two after each other, then four at once from two addresses.
	deployMessage(t, dialSMTP(t, p.Addr, ""), "a@example.com", "serve 0")
	deployMessage(t, dialSMTP(t, p.Addr, "127.0.0.2"), "b@example.com", "serve 1")
	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for i := 2; i < 6; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := []string{"127.0.0.1", "127.0.0.3"}[i%2]
			if err := serveSendOne(p.Addr, src, fmt.Sprintf("serve %d", i)); err != nil {
				errs <- err.Error()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	msgs := readSinkMessages(t, dump, 6, 30*time.Second)
	var subjects []string
	for _, m := range msgs {
		if s := regexp.MustCompile(`(?m)^Subject: (serve \d)$`).FindSubmatch(m.Data); s != nil {
			subjects = append(subjects, string(s[1]))
		}
		if m.ClientAddr == "" {
			t.Errorf("sink got no client address for %s", m.Path)
		}
	}
	slices.Sort(subjects)
	if want := []string{"serve 0", "serve 1", "serve 2", "serve 3", "serve 4", "serve 5"}; !slices.Equal(subjects, want) {
		t.Errorf("sink received %v, want %v", subjects, want)
	}
	// The child saw the socket's peer as the client (smtp-sink's XCLIENT
	// takes only NAME and HELO, so willi's log is where it shows).
	p.waitLog(t, `msg=transaction .*client=127\.0\.0\.2:\d+ .*rcpts=b@example\.com`, 1, 10*time.Second)
	// Each child was reaped and its exit logged.
	exits := p.waitLog(t, `msg="child exited".* status=0`, 6, 10*time.Second)
	for _, l := range exits {
		if !regexp.MustCompile(` pid=\d+ remote=127\.0\.0\.\d+:\d+ `).MatchString(l) {
			t.Errorf("child exit line lacks pid or remote: %s", l)
		}
	}
	if kids := serveChildren(p.Cmd.Process.Pid); len(kids) > 0 {
		t.Errorf("children still running after every session ended: %v", kids)
	}
	p.Cmd.Process.Signal(syscall.SIGTERM)
	if st := p.wait(t, 15*time.Second); st != 0 {
		t.Errorf("willi serve exit status %d after SIGTERM, want 0", st)
	}
}

// serveSendOne is deployMessage without testing.T, for goroutines.
func serveSendOne(addr, src, subject string) error {
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp4", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReader(c)
	reply := func() (string, error) {
		var last string
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return last + l, err
			}
			last = l
			if len(l) >= 4 && l[3] == ' ' {
				return l, nil
			}
		}
	}
	steps := []struct{ send, want string }{
		{"", "220"}, {"EHLO client.test", "250"}, {"MAIL FROM:<c@sender.test>", "250"},
		{"RCPT TO:<x@example.com>", "250"}, {"DATA", "354"},
		{"Subject: " + subject + "\r\n\r\nHi.\r\n.", "250"}, {"QUIT", "221"},
	}
	for _, s := range steps {
		if s.send != "" {
			if _, err := io.WriteString(c, s.send+"\r\n"); err != nil {
				return err
			}
		}
		l, err := reply()
		if err != nil || !strings.HasPrefix(l, s.want) {
			return fmt.Errorf("%s from %s: after %q got %q (%v), want %s", subject, src, s.send, l, err, s.want)
		}
	}
	return nil
}

func TestServeLimits(t *testing.T) {
	sink, _ := startSMTPSink(t)
	p := startServe(t, serveRoutedConfig(t, sink), "-max-conn", "3", "-max-per-source", "2")

	a1 := dialSMTP(t, p.Addr, "127.0.0.1")
	a1.Expect(220)
	a2 := dialSMTP(t, p.Addr, "127.0.0.1")
	a2.Expect(220)
	// A third from 127.0.0.1: past the per-source limit.
	serveExpectRefused(t, p.Addr, "127.0.0.1", "4.7.0")
	// Another address still gets in: 3 sessions now.
	b1 := dialSMTP(t, p.Addr, "127.0.0.2")
	b1.Expect(220)
	// A fourth from a fresh address: past the overall limit (busy).
	serveExpectRefused(t, p.Addr, "127.0.0.3", "4.3.2")
	refused := p.waitLog(t, `msg=refused`, 2, 5*time.Second)
	if !strings.Contains(refused[0], "from your address") || !strings.Contains(refused[1], "too many connections") {
		t.Errorf("refusal log lines: %q", refused)
	}
	// No child was started for a refused connection.
	if kids := serveChildren(p.Cmd.Process.Pid); len(kids) != 3 {
		t.Errorf("%d children for 3 admitted sessions: %v", len(kids), kids)
	}

	// When a session ends its slots are free again.
	if r := a1.Cmd("QUIT"); r.Code != 221 {
		t.Fatalf("QUIT: %q", r.Lines)
	}
	p.waitLog(t, `msg="child exited"`, 1, 10*time.Second)
	a3 := dialSMTP(t, p.Addr, "127.0.0.1")
	a3.Expect(220)
	for _, c := range []*smtptest.Client{a2, b1, a3} {
		if r := c.Cmd("QUIT"); r.Code != 221 {
			t.Errorf("QUIT: %q", r.Lines)
		}
	}
	p.waitLog(t, `msg="child exited"`, 4, 10*time.Second)
}

func TestServeSIGTERMLetsSessionFinish(t *testing.T) {
	sink, dump := startSMTPSink(t)
	p := startServe(t, serveRoutedConfig(t, sink), "-grace", "30s")

	c := dialSMTP(t, p.Addr, "")
	c.Expect(220)
	c.Want250("EHLO client.test", "MAIL FROM:<c@sender.test>", "RCPT TO:<late@example.com>")
	kids := serveChildren(p.Cmd.Process.Pid)
	if len(kids) != 1 {
		t.Fatalf("want one child for the session, have %v", kids)
	}

	p.Cmd.Process.Signal(syscall.SIGTERM)
	p.waitLog(t, `msg="stopping: no new connections"`, 1, 5*time.Second)
	// No new connections...
	deadline := time.Now().Add(5 * time.Second)
	for tcpListening(p.Addr) {
		if time.Now().After(deadline) {
			t.Fatal("willi serve still listens after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if conn, err := net.DialTimeout("tcp4", p.Addr, 2*time.Second); err == nil {
		conn.Close()
		t.Error("a new connection was accepted after SIGTERM")
	}
	// ...but the session in progress goes on to the end.
	time.Sleep(300 * time.Millisecond)
	select {
	case <-p.done:
		t.Fatal("willi serve exited with a session in progress")
	default:
	}
	if r := c.Data(smtptest.DotStuff([]byte("Subject: after SIGTERM\r\n\r\nStill delivered.\r\n"))); r.Code != 250 {
		t.Fatalf("end of data after SIGTERM: %q", r.Lines)
	}
	if r := c.Cmd("QUIT"); r.Code != 221 {
		t.Fatalf("QUIT: %q", r.Lines)
	}
	if st := p.wait(t, 15*time.Second); st != 0 {
		t.Errorf("willi serve exit status %d, want 0", st)
	}
	msgs := readSinkMessages(t, dump, 1, 10*time.Second)
	if !bytes.Contains(msgs[0].Data, []byte("Subject: after SIGTERM")) {
		t.Errorf("sink got:\n%s", msgs[0].Data)
	}
	for _, k := range kids {
		if serveAlive(k) {
			t.Errorf("child %d outlived willi serve", k)
		}
	}
	log := p.log()
	for _, want := range []string{`msg="child exited"`, `msg=stopped`} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %s:\n%s", want, log)
		}
	}
}

func TestServeGraceEndsIdleSessions(t *testing.T) {
	sink, _ := startSMTPSink(t)
	p := startServe(t, serveRoutedConfig(t, sink), "-grace", "1s")

	c := dialSMTP(t, p.Addr, "")
	c.Expect(220)
	kids := serveChildren(p.Cmd.Process.Pid)
	if len(kids) != 1 {
		t.Fatalf("want one child for the session, have %v", kids)
	}
	start := time.Now()
	p.Cmd.Process.Signal(syscall.SIGTERM)
	if st := p.wait(t, 20*time.Second); st != 0 {
		t.Errorf("willi serve exit status %d, want 0", st)
	}
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Errorf("willi serve stopped after %v, before the 1s grace", d)
	}
	// The client is told and the connection closed.
	c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, _ := io.ReadAll(c.Reader)
	if len(rest) > 0 && !bytes.HasPrefix(rest, []byte("421 ")) {
		t.Errorf("after the grace the client got %q, want a 421 or nothing", rest)
	}
	for _, k := range kids {
		if serveAlive(k) {
			t.Errorf("child %d outlived willi serve", k)
		}
	}
	if !strings.Contains(p.log(), "grace period over") {
		t.Errorf("log does not say the grace period ended:\n%s", p.log())
	}
}

func TestServeRefusesToStart(t *testing.T) {
	bin := buildWilli(t)
	dir := t.TempDir()
	bad := writeConfig(t, dir, "no_such_key = 1\n")
	good := serveRoutedConfig(t, "127.0.0.1:1")
	asRoot := []string{"serve", "-listen", "127.0.0.1:0", "-config", good}
	if os.Geteuid() != 0 {
		// Not root: the refusal to run sessions as root is shown by
		// -user root below; this row then names a user we are not.
		asRoot = append(asRoot, "-user", "nobody")
	}
	for _, tc := range []struct {
		args   []string
		status int
		says   string
	}{
		{[]string{"serve"}, 2, "-listen is required"},
		{asRoot, 2, "root"},
		{[]string{"serve", "-listen", "127.0.0.1:0", "-max-conn", "0", "-config", bad}, 2, "at least 1"},
		{[]string{"serve", "-listen", "127.0.0.1:0", "-config", filepath.Join(dir, "missing.conf")}, 1, "config is not usable"},
		{[]string{"serve", "-listen", "127.0.0.1:0", "-config", bad}, 1, "no_such_key"},
		{append([]string{"serve", "-listen", "256.0.0.1:25", "-config", good}, serveUserArgs(t)...), 1, "listen"},
		// Sessions never run as root.
		{[]string{"serve", "-listen", "127.0.0.1:0", "-config", good, "-user", "root"}, 2, "never run as root"},
		{[]string{"serve", "-listen", "127.0.0.1:0", "-config", good, "-user", "no-such-user-willi"}, 2, "no-such-user-willi"},
		{[]string{"serve", "-listen", "127.0.0.1:0", "-config", good, "-stress-timeout", "0s"}, 2, "positive"},
	} {
		out, err := deployRun(t, time.Minute, nil, bin, tc.args...)
		st := 0
		if ee, ok := err.(*exec.ExitError); ok {
			st = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if st != tc.status || !strings.Contains(out, tc.says) {
			t.Errorf("willi %v: status %d, want %d with %q; output:\n%s", tc.args, st, tc.status, tc.says, out)
		}
	}
}
