package test

// Helpers for tests that run the built willi binary against real peers:
// systemd-socket-activate, tcpserver, HAProxy, Postfix's smtp-sink, a private
// Postfix instance, swaks and Python's smtplib. A missing peer program is a
// test failure with an install hint, never a skip: CI must prove what it
// claims. Run test/deps.sh (as root) to install every peer.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"willi/internal/smtptest"
)

// peerInstallHint tells how to get the real peers the tests run.
const peerInstallHint = "install the test suite's peers with: sudo test/deps.sh"

// needProgram returns the path of a peer program or fails the test.
func needProgram(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/lib/postfix/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	t.Fatalf("%s is not installed; %s", name, peerInstallHint)
	return ""
}

// needRoot fails the test when it cannot run peers that need root (a private
// Postfix instance, smtp-sink's -u, binding as HAProxy).
func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("this real-peer test needs root (private Postfix instance); run the suite as root")
	}
}

// ---------------------------------------------------------------------------
// Building willi

var (
	williBuildOnce sync.Once
	williBinPath   string
	williBuildErr  error
)

// buildWilli builds the willi binary once per test binary run (CGO_ENABLED=0)
// and returns its path.
func buildWilli(t testing.TB) string {
	t.Helper()
	williBuildOnce.Do(func() {
		removeStaleBuildDirs()
		dir, err := os.MkdirTemp("", "willi-bin-")
		if err != nil {
			williBuildErr = err
			return
		}
		out := filepath.Join(dir, "willi")
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, goTool, "build", "-o", out, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		msg, err := cmd.CombinedOutput()
		if err != nil {
			williBuildErr = fmt.Errorf("go build: %v\n%s", err, msg)
			return
		}
		williBinPath = out
	})
	if williBuildErr != nil {
		t.Fatalf("building willi: %v", williBuildErr)
	}
	return williBinPath
}

// removeStaleBuildDirs removes binaries left by earlier runs that ended
// before TestMain could remove theirs (a timeout, a kill).
func removeStaleBuildDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "willi-bin-*"))
	for _, d := range dirs {
		if fi, err := os.Stat(d); err == nil && time.Since(fi.ModTime()) > 3*time.Hour {
			os.RemoveAll(d)
		}
	}
}

// ---------------------------------------------------------------------------
// Small utilities

// deadPort returns a loopback port on which nothing listens (connections are
// refused), for failover tests.
func deadPort(t testing.TB) int {
	t.Helper()
	return smtptest.FreePort(t)
}

// runCmd runs a command with a timeout and returns its combined output.
func runCmd(timeout time.Duration, stdin []byte, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// writeConfig writes toml as dir/willi.conf and returns its path.
func writeConfig(t testing.TB, dir, toml string) string {
	t.Helper()
	p := filepath.Join(dir, "willi.conf")
	if err := os.WriteFile(p, []byte(toml), 0o644); err != nil {
		t.Fatalf("writeConfig: %v", err)
	}
	return p
}

// tcpListening reports whether something listens on the IPv4 addr
// (host:port), read from /proc/net/tcp so that checking makes no connection.
func tcpListening(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host).To4()
	p, err := strconv.Atoi(port)
	if ip == nil || err != nil {
		return false
	}
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], p)
	anyAddr := fmt.Sprintf("00000000:%04X", p)
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 4 || f[3] != "0A" { // 0A = LISTEN
			continue
		}
		if f[1] == want || f[1] == anyAddr {
			return true
		}
	}
	return false
}

// waitListening waits until addr is listening or fails the test.
func waitListening(t testing.TB, addr string, timeout time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !tcpListening(addr) {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not listen on %s within %v", what, addr, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// procEntry is a live (not zombie) process from /proc/PID/stat.
type procEntry struct{ pid, ppid, pgrp int }

// liveProcesses lists every process that is not a zombie.
func liveProcesses() []procEntry {
	var out []procEntry
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces.
		s := string(data)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 3 || f[0] == "Z" {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		pgrp, _ := strconv.Atoi(f[2])
		out = append(out, procEntry{pid, ppid, pgrp})
	}
	return out
}

// processGroupMembers lists the pids in process group pgid, excluding pgid
// itself.
func processGroupMembers(pgid int) []int {
	var pids []int
	for _, p := range liveProcesses() {
		if p.pgrp == pgid && p.pid != pgid {
			pids = append(pids, p.pid)
		}
	}
	return pids
}

// procCmdline returns /proc/PID/cmdline with spaces between arguments.
func procCmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.TrimSpace(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
}

// startListener starts a peer (startGroup) with its output in logPath and
// waits until it listens on addr. When the test fails, the cleanup shows the
// tail of that output, after what failText returns (nil: nothing more).
func startListener(t testing.TB, cmd *exec.Cmd, what, logPath, addr string, failText func() string) {
	t.Helper()
	lf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	t.Cleanup(func() {
		lf.Close()
		if t.Failed() {
			extra := ""
			if failText != nil {
				extra = failText()
			}
			t.Logf("%s%s output:\n%s", extra, what, tailFile(logPath, 8<<10))
		}
	})
	startGroup(t, cmd, what)
	waitListening(t, addr, 10*time.Second, what)
}

// startGroup starts cmd in its own process group and registers a cleanup that
// kills the whole group (SIGTERM, then SIGKILL) and reaps the leader.
func startGroup(t testing.TB, cmd *exec.Cmd, what string) {
	t.Helper()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", what, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	pgid := cmd.Process.Pid
	t.Cleanup(func() {
		syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			syscall.Kill(-pgid, syscall.SIGKILL)
			<-done
		}
		// Members that outlived the leader.
		for i := 0; i < 50 && len(processGroupMembers(pgid)) > 0; i++ {
			syscall.Kill(-pgid, syscall.SIGKILL)
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// tailFile returns the last max bytes of a file, for failure messages.
func tailFile(path string, max int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	if fi != nil && fi.Size() > max {
		f.Seek(fi.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// ---------------------------------------------------------------------------
// willi under its process managers

// williListener is willi behind a listener that starts one willi per
// connection (systemd-socket-activate or tcpserver).
type williListener struct {
	Addr       string // host:port clients connect to
	StderrPath string // willi's (and the manager's) standard error
	Pgid       int
}

// williLaunchOpts selects how systemd-socket-activate hands willi the socket.
type williLaunchOpts struct {
	Inetd bool     // --inetd: the socket on stdin/stdout; else LISTEN_FDS (fd 3)
	Env   []string // extra NAME=VALUE for willi (systemd-socket-activate -E)
}

// startWilliSocketActivate runs `systemd-socket-activate --accept [--inetd]
// -l 127.0.0.1:PORT bin -config cfgPath`, waits until it listens and returns
// the address. Standard error goes to a file under t.TempDir(), shown when the
// test fails. The cleanup checks that no willi outlived its session by more
// than 5 s (G6) and kills the process group.
func startWilliSocketActivate(t testing.TB, bin, cfgPath string, inetd bool) (addr string) {
	t.Helper()
	return startWilliActivated(t, bin, cfgPath, williLaunchOpts{Inetd: inetd}).Addr
}

// startWilliActivated is startWilliSocketActivate with options and the
// details returned.
func startWilliActivated(t testing.TB, bin, cfgPath string, o williLaunchOpts) *williListener {
	t.Helper()
	sa := needProgram(t, "systemd-socket-activate")
	addr := fmt.Sprintf("127.0.0.1:%d", smtptest.FreePort(t))
	args := []string{"--accept", "-l", addr}
	if o.Inetd {
		args = append(args, "--inetd")
	}
	for _, e := range o.Env {
		args = append(args, "-E", e)
	}
	args = append(args, bin, "-config", cfgPath)
	return startWilliManager(t, sa, args, addr, "systemd-socket-activate")
}

// startWilliTCPServer runs willi under ucspi-tcp's tcpserver (the connection
// on stdin/stdout, TCPREMOTEIP set) and returns its address.
func startWilliTCPServer(t testing.TB, bin, cfgPath string) *williListener {
	t.Helper()
	ts := needProgram(t, "tcpserver")
	port := smtptest.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	args := []string{"-q", "-R", "-H", "-l", "willi.test", "127.0.0.1", strconv.Itoa(port),
		bin, "-config", cfgPath}
	return startWilliManager(t, ts, args, addr, "tcpserver")
}

func startWilliManager(t testing.TB, prog string, args []string, addr, what string) *williListener {
	t.Helper()
	stderrPath := filepath.Join(t.TempDir(), "willi-stderr.log")
	f, err := os.Create(stderrPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(prog, args...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.Env = os.Environ()
	w := &williListener{Addr: addr, StderrPath: stderrPath}
	// Registered before startGroup's cleanup, so it runs after it: the log
	// is complete when shown.
	t.Cleanup(func() {
		f.Close()
		log := tailFile(stderrPath, 16<<10)
		if strings.Contains(log, "panic:") || strings.Contains(log, "goroutine ") {
			t.Errorf("willi panicked (G6); stderr %s:\n%s", stderrPath, log)
		} else if t.Failed() {
			t.Logf("willi stderr (%s, %s):\n%s", what, stderrPath, log)
		}
	})
	startGroup(t, cmd, what)
	w.Pgid = cmd.Process.Pid
	// Before the group is killed: every willi must have exited by now,
	// within 5 s of its client going away (G6).
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			left := processGroupMembers(w.Pgid)
			if len(left) == 0 {
				return
			}
			if time.Now().After(deadline) {
				var desc []string
				for _, p := range left {
					desc = append(desc, fmt.Sprintf("%d %q", p, procCmdline(p)))
				}
				t.Errorf("willi processes still running 5s after the test's clients were gone (G6): %s",
					strings.Join(desc, "; "))
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	waitListening(t, addr, 10*time.Second, what)
	return w
}

// williPipeProc is one willi whose standard input and output are two pipes,
// as inetd-style managers may hand over a connection.
type williPipeProc struct {
	Conn       *pipeConn
	Cmd        *exec.Cmd
	StderrPath string
	done       chan struct{}
}

// startWilliPipes runs bin -config cfgPath with stdin and stdout connected to
// pipes and returns a net.Conn over them (usable with crypto/tls).
func startWilliPipes(t testing.TB, bin, cfgPath string, env ...string) *williPipeProc {
	t.Helper()
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stderrPath := filepath.Join(t.TempDir(), "willi-stderr.log")
	ef, err := os.Create(stderrPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-config", cfgPath)
	cmd.Stdin = inR
	cmd.Stdout = outW
	cmd.Stderr = ef
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting willi: %v", err)
	}
	inR.Close()
	outW.Close()
	p := &williPipeProc{Conn: &pipeConn{r: outR, w: inW}, Cmd: cmd, StderrPath: stderrPath, done: make(chan struct{})}
	go func() { cmd.Wait(); ef.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.Conn.Close()
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			t.Errorf("willi (pipes) still running 5s after its client closed (G6)")
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
		log := tailFile(stderrPath, 16<<10)
		if strings.Contains(log, "panic:") {
			t.Errorf("willi panicked; stderr:\n%s", log)
		} else if t.Failed() {
			t.Logf("willi stderr (pipes, %s):\n%s", stderrPath, log)
		}
	})
	return p
}

// Wait waits up to timeout for willi to exit and returns its exit status.
func (p *williPipeProc) Wait(timeout time.Duration) (int, error) {
	select {
	case <-p.done:
		return p.Cmd.ProcessState.ExitCode(), nil
	case <-time.After(timeout):
		return -1, fmt.Errorf("willi still running after %v", timeout)
	}
}

// pipeConn is a net.Conn over a read pipe and a write pipe.
type pipeConn struct {
	r, w *os.File
	once sync.Once
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

func (c *pipeConn) Read(b []byte) (int, error)  { return c.r.Read(b) }
func (c *pipeConn) Write(b []byte) (int, error) { return c.w.Write(b) }
func (c *pipeConn) Close() error {
	c.once.Do(func() { c.w.Close(); c.r.Close() })
	return nil
}
func (c *pipeConn) CloseWrite() error                  { return c.w.Close() }
func (c *pipeConn) LocalAddr() net.Addr                { return pipeAddr{} }
func (c *pipeConn) RemoteAddr() net.Addr               { return pipeAddr{} }
func (c *pipeConn) SetReadDeadline(t time.Time) error  { return c.r.SetReadDeadline(t) }
func (c *pipeConn) SetWriteDeadline(t time.Time) error { return c.w.SetWriteDeadline(t) }
func (c *pipeConn) SetDeadline(t time.Time) error {
	c.r.SetReadDeadline(t)
	return c.w.SetWriteDeadline(t)
}

// ---------------------------------------------------------------------------
// A raw SMTP client for exact replies

// dialSMTP connects to addr from the local address src ("" for any) and
// returns an smtptest client; the connection is closed in t.Cleanup.
func dialSMTP(t testing.TB, addr, src string) *smtptest.Client {
	t.Helper()
	d := net.Dialer{Timeout: 10 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	c, err := d.Dial("tcp4", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return smtptest.NewClient(t, c)
}

// ---------------------------------------------------------------------------
// smtp-sink: a fast upstream that records what it received

// startSMTPSink runs Postfix's smtp-sink on a free loopback port, dumping
// every transaction into its own file under dumpDir. Read them back with
// readSinkMessages.
func startSMTPSink(t testing.TB, extraArgs ...string) (addr string, dumpDir string) {
	t.Helper()
	needRoot(t)
	sink := needProgram(t, "smtp-sink")
	dumpDir = t.TempDir()
	addr = fmt.Sprintf("127.0.0.1:%d", smtptest.FreePort(t))
	args := append([]string{"-u", "root", "-h", "sink.test", "-d", dumpDir + "/msg."}, extraArgs...)
	args = append(args, addr, "100")
	startListener(t, exec.Command(sink, args...), "smtp-sink", filepath.Join(t.TempDir(), "smtp-sink.log"), addr, nil)
	return addr, dumpDir
}

// sinkMessage is one transaction as smtp-sink dumped it.
type sinkMessage struct {
	Path       string
	ClientAddr string   // X-Client-Addr
	Proto      string   // X-Client-Proto
	Helo       string   // X-Helo-Args
	MailArgs   string   // X-Mail-Args
	RcptArgs   []string // X-Rcpt-Args, in order
	// Data is the message as received, dot-unstuffed, each line ending in a
	// single "\n" (smtp-sink writes text lines); compare with sinkForm.
	Data []byte
}

// sinkForm is how smtp-sink dumps a message of CRLF lines: LF line ends.
func sinkForm(msg []byte) []byte {
	return bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
}

// readSinkMessages waits until dumpDir holds at least n complete dumps and
// returns them all, oldest first.
func readSinkMessages(t testing.TB, dumpDir string, n int, timeout time.Duration) []sinkMessage {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var files []string
	for {
		files, _ = filepath.Glob(filepath.Join(dumpDir, "msg.*"))
		if len(files) >= n && filesStable(files) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("smtp-sink recorded %d messages, want %d (within %v)", len(files), n, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	sort.Slice(files, func(i, j int) bool {
		a, _ := os.Stat(files[i])
		b, _ := os.Stat(files[j])
		return a.ModTime().Before(b.ModTime())
	})
	var msgs []sinkMessage
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m, err := parseSinkDump(raw)
		if err != nil {
			t.Fatalf("parsing smtp-sink dump %s: %v", f, err)
		}
		m.Path = f
		msgs = append(msgs, m)
	}
	return msgs
}

// filesStable reports whether the files' sizes stay put for 100 ms.
func filesStable(files []string) bool {
	size := func() int64 {
		var s int64
		for _, f := range files {
			if fi, err := os.Stat(f); err == nil {
				s += fi.Size()
			}
		}
		return s
	}
	a := size()
	time.Sleep(100 * time.Millisecond)
	return a == size()
}

func parseSinkDump(raw []byte) (sinkMessage, error) {
	var m sinkMessage
	rest := raw
	for {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			return m, errors.New("no Received: line ends the smtp-sink headers")
		}
		line := string(rest[:i])
		rest = rest[i+1:]
		k, v, _ := strings.Cut(line, ": ")
		switch k {
		case "X-Client-Addr":
			m.ClientAddr = v
		case "X-Client-Proto":
			m.Proto = v
		case "X-Helo-Args":
			m.Helo = v
		case "X-Mail-Args":
			m.MailArgs = v
		case "X-Rcpt-Args":
			m.RcptArgs = append(m.RcptArgs, v)
		case "Received":
			// Two continuation lines, then the message.
			for j := 0; j < 2; j++ {
				i := bytes.IndexByte(rest, '\n')
				if i < 0 || len(rest) == 0 || rest[0] != '\t' {
					return m, errors.New("short smtp-sink Received: header")
				}
				rest = rest[i+1:]
			}
			// The dump ends with one empty line after the message.
			if !bytes.HasSuffix(rest, []byte("\n")) {
				return m, errors.New("dump does not end in an empty line")
			}
			m.Data = rest[:len(rest)-1]
			return m, nil
		default:
			return m, fmt.Errorf("unexpected smtp-sink header line %q", line)
		}
	}
}

// ---------------------------------------------------------------------------
// A private Postfix instance

// postfixOpts selects what a private Postfix instance offers.
type postfixOpts struct {
	XClient bool // smtpd_authorized_xclient_hosts = 127.0.0.1 (willi's source address)
	TLS     bool // STARTTLS (security level may) with a generated certificate
	// ProxyListener adds a second smtpd (ProxyAddr) with
	// smtpd_upstream_proxy_protocol = haproxy.
	ProxyListener bool
	// Users are the mailboxes at example.org; default alice, bob, carol.
	Users []string
}

// postfixInstance is a running private Postfix on loopback.
type postfixInstance struct {
	Dir       string // instance root: etc/, queue/, data/, mail/, maillog
	ConfigDir string
	Addr      string // smtpd
	ProxyAddr string // smtpd behind PROXY protocol (ProxyListener only)
	Domain    string // virtual mailbox domain: example.org
	Hostname  string // myhostname: upstream.test
	CertFile  string

	mu   sync.Mutex
	seen map[string]bool
}

// postfixInstanceDir lays out a private instance in a new folder with
// test/postfix-instance.sh, which bench/tls-setup.sh runs too (its folders,
// the main.cf settings every instance shares, master.cf with the listener
// lines given), and returns the folder: a short path under /tmp, because
// Postfix checks the ownership and modes of the queue directory's parents
// and its daemons run unprivileged. The caller adds its role's settings
// with appendMainCf.
func postfixInstanceDir(t testing.TB, prefix string, listeners ...string) string {
	t.Helper()
	if _, err := user.Lookup("postfix"); err != nil {
		t.Fatalf("no postfix user: %v; %s", err, peerInstallHint)
	}
	needProgram(t, "postconf")
	dir, err := os.MkdirTemp("/tmp", prefix)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"test/postfix-instance.sh", dir}, listeners...)
	if _, err := runCmd(30*time.Second, nil, "sh", args...); err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	return dir
}

// appendMainCf adds settings (main.cf lines) to a private instance's
// main.cf.
func appendMainCf(t testing.TB, configDir, settings string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(configDir, "main.cf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(settings); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// startPostfix starts a private Postfix (own config, queue, data and mailbox
// directories; smtpd on free loopback ports; log to a file) and stops it in
// t.Cleanup. An unknown recipient at example.org gets
// "550 5.1.1 <...>: Recipient address rejected: User unknown in virtual mailbox table".
func startPostfix(t testing.TB, opts postfixOpts) *postfixInstance {
	t.Helper()
	needRoot(t)
	postfixCmd := needProgram(t, "postfix")
	postmap := needProgram(t, "postmap")
	needProgram(t, "smtpd") // in /usr/lib/postfix/sbin
	p := &postfixInstance{
		Addr:     fmt.Sprintf("127.0.0.1:%d", smtptest.FreePort(t)),
		Domain:   "example.org",
		Hostname: "upstream.test",
		seen:     map[string]bool{},
	}
	listeners := []string{p.Addr + " inet n - n - - smtpd"}
	if opts.ProxyListener {
		p.ProxyAddr = fmt.Sprintf("127.0.0.1:%d", smtptest.FreePort(t))
		listeners = append(listeners, p.ProxyAddr+" inet n - n - - smtpd -o smtpd_upstream_proxy_protocol=haproxy")
	}
	dir := postfixInstanceDir(t, "willi-pf-", listeners...)
	p.Dir, p.ConfigDir = dir, filepath.Join(dir, "etc")
	users := opts.Users
	if len(users) == 0 {
		users = []string{"alice", "bob", "carol"}
	}
	var vmb strings.Builder
	for _, u := range users {
		fmt.Fprintf(&vmb, "%s@%s %s/%s/\n", u, p.Domain, p.Domain, u)
	}
	vmbPath := filepath.Join(p.ConfigDir, "vmailbox")
	if err := os.WriteFile(vmbPath, []byte(vmb.String()), 0o644); err != nil {
		t.Fatal(err)
	}

	mainCf := fmt.Sprintf(`# The upstream.
myhostname = %[1]s
mydomain = test
myorigin = $myhostname
relayhost =
smtpd_banner = $myhostname ESMTP upstream
virtual_mailbox_domains = %[2]s
virtual_mailbox_maps = hash:%[3]s
smtpd_reject_unlisted_recipient = yes
`, p.Hostname, p.Domain, vmbPath)
	if opts.XClient {
		mainCf += "smtpd_authorized_xclient_hosts = 127.0.0.1\n"
	}
	if opts.TLS {
		cert, key := smtptest.GenCert(t, p.ConfigDir, p.Hostname)
		p.CertFile = cert
		mainCf += fmt.Sprintf("smtpd_tls_cert_file = %s\nsmtpd_tls_key_file = %s\n"+
			"smtpd_tls_security_level = may\nsmtpd_tls_received_header = yes\n"+
			"smtpd_tls_loglevel = 1\n", cert, key)
	}
	appendMainCf(t, p.ConfigDir, mainCf)
	if _, err := runCmd(30*time.Second, nil, postmap, "-c", p.ConfigDir, "hash:"+vmbPath); err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("postfix log (%s):\n%s", filepath.Join(dir, "maillog"), tailFile(filepath.Join(dir, "maillog"), 16<<10))
		}
		p.stop(postfixCmd)
		os.RemoveAll(dir)
	})
	if _, err := runCmd(60*time.Second, nil, postfixCmd, "-c", p.ConfigDir, "start"); err != nil {
		t.Fatalf("starting private postfix: %v\nlog:\n%s", err, tailFile(filepath.Join(dir, "maillog"), 8<<10))
	}
	waitListening(t, p.Addr, 15*time.Second, "postfix smtpd")
	if p.ProxyAddr != "" {
		waitListening(t, p.ProxyAddr, 15*time.Second, "postfix smtpd (proxy protocol)")
	}
	return p
}

// masterPid reads the master's pid file, 0 if none.
func (p *postfixInstance) masterPid() int {
	b, err := os.ReadFile(filepath.Join(p.Dir, "queue", "pid", "master.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// stop stops the instance and makes sure none of its processes is left.
func (p *postfixInstance) stop(postfixCmd string) {
	pid := p.masterPid()
	if pid <= 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		exec.CommandContext(ctx, postfixCmd, "-c", p.ConfigDir, "stop").Run()
		cancel()
		return
	}
	// What `postfix stop` does, without its wait: SIGTERM to the master,
	// which terminates its children.
	syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 100; i++ {
		if syscall.Kill(pid, 0) != nil && len(processGroupMembers(pid)) == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The master leads its own process group (it calls setsid).
	syscall.Kill(-pid, syscall.SIGKILL)
	syscall.Kill(pid, syscall.SIGKILL)
	time.Sleep(100 * time.Millisecond)
}

// Log returns Postfix's log so far.
func (p *postfixInstance) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.Dir, "maillog"))
	return string(b)
}

// waitLog waits until the log contains substr and returns the log.
func (p *postfixInstance) waitLog(t testing.TB, substr string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		l := p.Log()
		if strings.Contains(l, substr) {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("postfix log has no %q within %v; log:\n%s", substr, timeout, l)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitMail waits for a message delivered to user's maildir that no earlier
// waitMail returned, and returns it as stored (LF line ends).
func (p *postfixInstance) waitMail(t testing.TB, user string, timeout time.Duration) string {
	t.Helper()
	dir := filepath.Join(p.Dir, "mail", p.Domain, user, "new")
	deadline := time.Now().Add(timeout)
	for {
		ents, _ := os.ReadDir(dir)
		sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
		p.mu.Lock()
		for _, e := range ents {
			path := filepath.Join(dir, e.Name())
			if p.seen[path] {
				continue
			}
			b, err := os.ReadFile(path)
			if err != nil {
				continue
			}
			p.seen[path] = true
			p.mu.Unlock()
			return string(b)
		}
		p.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no new message for %s@%s within %v; postfix log:\n%s", user, p.Domain, timeout, tailFile(filepath.Join(p.Dir, "maillog"), 8<<10))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// noNewMail checks that user got no message beyond those already returned,
// waiting settle for a late delivery.
func (p *postfixInstance) noNewMail(t testing.TB, user string, settle time.Duration) {
	t.Helper()
	time.Sleep(settle)
	dir := filepath.Join(p.Dir, "mail", p.Domain, user, "new")
	ents, _ := os.ReadDir(dir)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range ents {
		if path := filepath.Join(dir, e.Name()); !p.seen[path] {
			b, _ := os.ReadFile(path)
			t.Errorf("unexpected message delivered to %s:\n%s", user, b)
			p.seen[path] = true
		}
	}
}

// mailHeaders returns the values of every header field called name (case
// insensitive) in a stored message, unfolded into single lines, top first.
func mailHeaders(msg, name string) []string {
	head, _, _ := strings.Cut(strings.ReplaceAll(msg, "\r\n", "\n"), "\n\n")
	var out []string
	cur := -1
	for _, line := range strings.Split(head, "\n") {
		if line != "" && (line[0] == ' ' || line[0] == '\t') {
			if cur >= 0 {
				out[cur] += " " + strings.TrimSpace(line)
			}
			continue
		}
		cur = -1
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.EqualFold(k, name) {
			out = append(out, strings.TrimSpace(v))
			cur = len(out) - 1
		}
	}
	return out
}

// mailBody returns the body of a stored message (after the empty line).
func mailBody(msg string) string {
	_, body, _ := strings.Cut(msg, "\n\n")
	return body
}

// ---------------------------------------------------------------------------
// Clients: swaks and Python smtplib

// swaks runs swaks with args (bounded to 90 s) and returns its combined
// output. --timeout 30 is added unless args set --timeout.
func swaks(t testing.TB, args ...string) (string, error) {
	t.Helper()
	bin := needProgram(t, "swaks")
	hasTimeout := false
	for _, a := range args {
		if a == "--timeout" || a == "-to" {
			hasTimeout = true
		}
	}
	if !hasTimeout {
		args = append(args, "--timeout", "30")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	return string(out), err
}

// swaksReplies extracts the server reply lines from swaks output ("<-  " and
// "<** " plain, "<~  " and "<~* " inside TLS), without the prefix.
func swaksReplies(out string) []string {
	var r []string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimRight(line, "\r")
		for _, pre := range []string{"<-  ", "<** ", "<~  ", "<~* "} {
			if strings.HasPrefix(line, pre) {
				r = append(r, line[len(pre):])
				break
			}
		}
	}
	return r
}

// pyOpts is one message sent with Python's smtplib (testdata/smtp_client.py).
type pyOpts struct {
	Server   string   `json:"server"`
	Source   string   `json:"source,omitempty"` // local address to bind, e.g. 127.0.0.2
	Helo     string   `json:"helo"`
	StartTLS bool     `json:"starttls"`
	From     string   `json:"from"`
	To       []string `json:"to"`
	// Message is sent with smtplib's data(): it dot-stuffs and turns bare
	// CR/LF into CRLF.
	Message     []byte   `json:"-"`
	MailOptions []string `json:"mail_options,omitempty"`
	Timeout     float64  `json:"timeout,omitempty"` // seconds, default 60
	MessageFile string   `json:"message_file"`
}

// pyReply is one reply as smtplib reports it (text lines joined by "\n").
type pyReply struct {
	Code int    `json:"code"`
	Text string `json:"text"`
}

// pyResult is the dialogue's outcome; Error is set when smtplib raised.
type pyResult struct {
	Banner     pyReply   `json:"banner"`
	Ehlo       pyReply   `json:"ehlo"`
	StartTLS   *pyReply  `json:"starttls"`
	EhloTLS    *pyReply  `json:"ehlo_tls"`
	TLSVersion string    `json:"tls_version"`
	Mail       *pyReply  `json:"mail"`
	Rcpt       []pyReply `json:"rcpt"`
	Data       *pyReply  `json:"data"`
	Quit       *pyReply  `json:"quit"`
	Error      string    `json:"error"`
}

// pySMTP sends one message with Python's smtplib and returns every reply.
func pySMTP(t testing.TB, o pyOpts) pyResult {
	t.Helper()
	py := needProgram(t, "python3")
	script, err := filepath.Abs(filepath.Join("testdata", "smtp_client.py"))
	if err != nil {
		t.Fatal(err)
	}
	mf := filepath.Join(t.TempDir(), "message.eml")
	if err := os.WriteFile(mf, o.Message, 0o644); err != nil {
		t.Fatal(err)
	}
	o.MessageFile = mf
	if o.Timeout == 0 {
		o.Timeout = 60
	}
	spec, _ := json.Marshal(o)
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(o.Timeout+30)*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, script, string(spec))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python smtplib client: %v\nstdout: %s\nstderr: %s", err, out, stderr.Bytes())
	}
	var res pyResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("python smtplib client output %q: %v", out, err)
	}
	return res
}

// ---------------------------------------------------------------------------
// HAProxy in front of willi

// startHAProxy runs HAProxy in TCP mode on a free loopback port, forwarding
// to backend ("host:port") with serverOpts on the server line (e.g.
// "send-proxy-v2" or "send-proxy"). It returns the frontend address.
func startHAProxy(t testing.TB, backend string, serverOpts ...string) (addr string) {
	t.Helper()
	addr = fmt.Sprintf("127.0.0.1:%d", smtptest.FreePort(t))
	cfg := fmt.Sprintf(`global
    log stderr format raw local0 info
    maxconn 200

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend smtp_in
    bind %s
    default_backend willi

backend willi
    server w1 %s %s
`, addr, backend, strings.Join(serverOpts, " "))
	startHAProxyConfig(t, cfg, addr)
	return addr
}

// startHAProxyConfig runs HAProxy with the configuration cfg, after
// `haproxy -c` accepts it, and waits until it listens on addr.
func startHAProxyConfig(t testing.TB, cfg, addr string) {
	t.Helper()
	hap := needProgram(t, "haproxy")
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	out, err := exec.CommandContext(ctx, hap, "-c", "-f", cfgPath).CombinedOutput()
	cancel()
	if err != nil {
		t.Fatalf("haproxy -c rejects the configuration: %v\n%s\n%s", err, out, cfg)
	}
	startListener(t, exec.Command(hap, "-db", "-f", cfgPath), "haproxy", filepath.Join(dir, "haproxy.log"), addr,
		func() string { return "haproxy config:\n" + cfg + "\n" })
}
