package test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"willi/internal/smtptest"
)

// Class 8: process limits, on the built binary with its standard input and
// output as pipes: a 1 GiB message with flat memory, SIGTERM, SIGPIPE,
// exit codes. (A panic turned into 421 is tested in-process, beside the
// other hardening tables: nothing in the binary panics on purpose.)

const (
	hWait    = 20 * time.Second // only against hangs; never a timing assertion
	hTimeout = "421 4.4.2 Error: timeout exceeded, closing connection\r\n"
)

// hSinkUp is a loopback upstream for the binary: it accepts every command,
// counts message octets without keeping them, and records whether each
// message ended.
type hSinkUp struct {
	addr string
	mu   sync.Mutex
	cmds []string
	data int64 // message octets received, end of data excluded
	ends int   // ends of data received
	bad  string
	done chan struct{} // closed when the first connection ended
}

func startHSinkUp(t *testing.T) *hSinkUp {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	u := &hSinkUp{addr: l.Addr().String(), done: make(chan struct{})}
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer close(u.done)
		defer c.Close()
		u.serve(c)
	}()
	return u
}

func (u *hSinkUp) serve(c net.Conn) {
	r := bufio.NewReaderSize(c, 64<<10)
	io.WriteString(c, "220 sink.test ESMTP\r\n")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		u.mu.Lock()
		u.cmds = append(u.cmds, strings.TrimSuffix(line, "\r\n"))
		u.mu.Unlock()
		switch {
		case strings.HasPrefix(line, "EHLO"):
			io.WriteString(c, "250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 4294967296\r\n")
		case line == "DATA\r\n":
			io.WriteString(c, "354 go ahead\r\n")
			if !u.readData(r) {
				return
			}
			io.WriteString(c, "250 2.0.0 Ok: queued as BIG\r\n")
		case line == "QUIT\r\n":
			io.WriteString(c, "221 2.0.0 Bye\r\n")
			return
		default:
			io.WriteString(c, "250 2.0.0 Ok\r\n")
		}
	}
}

// readData consumes message data up to "\r\n.\r\n" (the DATA line's CRLF
// counting), checking that no bare LF comes through; false when the
// connection ended first.
func (u *hSinkUp) readData(r *bufio.Reader) bool {
	const end = "\r\n.\r\n"
	tail := []byte("\r\n") // the last octets seen, to find an end across reads
	var n int64
	for {
		buf, _ := r.Peek(r.Buffered())
		if len(buf) == 0 {
			if _, err := r.Peek(1); err != nil {
				return false
			}
			continue
		}
		joined := append(append([]byte(nil), tail...), buf...)
		if i := bytes.Index(joined, []byte(end)); i >= 0 {
			used := i + len(end) - len(tail)
			n += int64(used) - 3
			r.Discard(used)
			u.mu.Lock()
			u.data, u.ends = n, u.ends+1
			u.mu.Unlock()
			return true
		}
		if i := bytes.IndexByte(buf, '\n'); i >= 0 && (i == 0 && tail[len(tail)-1] != '\r' || i > 0 && buf[i-1] != '\r') {
			u.mu.Lock()
			u.bad = "bare LF in data"
			u.mu.Unlock()
		}
		n += int64(len(buf))
		tail = joined[max(0, len(joined)-4):]
		r.Discard(len(buf))
		u.mu.Lock()
		u.data = n
		u.mu.Unlock()
	}
}

func (u *hSinkUp) snapshot() (cmds []string, data int64, ends int, bad string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.cmds...), u.data, u.ends, u.bad
}

// hWilli starts the built willi on pipes with a config routing everything
// to up.
func hWilli(t *testing.T, up, extra string) (*williPipeProc, *smtptest.Client) {
	t.Helper()
	bin := buildWilli(t)
	conf := writeConfig(t, t.TempDir(), "hostname = \"mx.test\"\n"+extra+"\n[[mapping]]\ntype = \"static\"\nserver = \""+up+"\"\n"+
		"[[upstream]]\nserver = \""+up+"\"\nclient_address = \"none\"\n")
	p := startWilliPipes(t, bin, conf)
	c := smtptest.NewClient(t, p.Conn)
	return p, c
}

// vmHWM is a process's peak resident set in KiB.
func vmHWM(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

func hExit(t *testing.T, p *williPipeProc, want int) {
	t.Helper()
	code, err := p.Wait(hWait)
	if err != nil {
		t.Fatal(err)
	}
	if ws := p.Cmd.ProcessState.Sys().(syscall.WaitStatus); ws.Signaled() {
		t.Fatalf("willi killed by %v", ws.Signal())
	}
	if code != want {
		t.Fatalf("willi exit status %d, want %d", code, want)
	}
}

// TestHardeningProcessBigMessage streams a 1 GiB message through the
// binary: it is relayed whole, once, and willi's peak RSS stays under
// 64 MiB (G7).
func TestHardeningProcessBigMessage(t *testing.T) {
	up := startHSinkUp(t)
	p, c := hWilli(t, up.addr, "max_message_size = 2147483648")
	c.Expect(220)
	c.Want250("EHLO client.example", "MAIL FROM:<a@example.net> SIZE=1073742000", "RCPT TO:<b@example.org>")
	if r := c.Cmd("DATA"); r.Code != 354 {
		t.Fatalf("DATA: %q", r.Lines)
	}
	line := strings.Repeat("x", 998) + "\r\n"
	block := []byte(strings.Repeat(line, 256)) // 256 000 octets
	const blocks = 4195                        // 1 073 920 000 octets > 1 GiB
	p.Conn.SetWriteDeadline(time.Now().Add(5 * time.Minute))
	for range blocks {
		if _, err := p.Conn.Write(block); err != nil {
			t.Fatalf("writing the message: %v", err)
		}
	}
	io.WriteString(p.Conn, ".\r\n")
	rep, err := c.ReadReply()
	if err != nil || rep.Code != 250 || rep.Last() != "2.0.0 Ok: queued as BIG" {
		t.Fatalf("end of data: %q %v", rep.Lines, err)
	}
	hwm := vmHWM(t, p.Cmd.Process.Pid)
	c.Cmd("QUIT")
	hExit(t, p, 0)
	<-up.done
	_, data, ends, bad := up.snapshot()
	if want := int64(blocks) * int64(len(block)); data != want || ends != 1 || bad != "" {
		t.Fatalf("upstream got %d octets in %d messages (%s), want %d in 1", data, ends, bad, want)
	}
	t.Logf("1 GiB relayed; willi's peak RSS %d KiB", hwm)
	if hwm > 64<<10 {
		t.Fatalf("willi's peak RSS %d KiB for a 1 GiB message, want under 64 MiB (G7)", hwm)
	}
}

// TestHardeningProcessSIGTERM: SIGTERM (and SIGINT) answers 421 4.3.2 and
// exits 0; mid-DATA the upstream connection is closed without an end of data.
func TestHardeningProcessSIGTERM(t *testing.T) {
	t.Run("mid-DATA", func(t *testing.T) {
		t.Parallel()
		up := startHSinkUp(t)
		p, c := hWilli(t, up.addr, "")
		c.Expect(220)
		c.Want250("EHLO client.example", "MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>")
		if r := c.Cmd("DATA"); r.Code != 354 {
			t.Fatalf("DATA: %q", r.Lines)
		}
		io.WriteString(p.Conn, strings.Repeat("a line of the message\r\n", 1000))
		for i := 0; ; i++ {
			if _, data, _, _ := up.snapshot(); data >= 23000 {
				break
			}
			if i == 2000 {
				t.Fatal("the message did not reach the upstream")
			}
			time.Sleep(10 * time.Millisecond)
		}
		p.Cmd.Process.Signal(syscall.SIGTERM)
		rep, err := c.ReadReply()
		if err != nil || rep.String() != "421 4.3.2 Service shutting down, closing connection" {
			t.Fatalf("after SIGTERM: %q %v", rep.Lines, err)
		}
		if rest, _ := io.ReadAll(c.Reader); len(rest) != 0 {
			t.Fatalf("after the 421: %q (G9)", rest)
		}
		hExit(t, p, 0)
		select {
		case <-up.done:
		case <-time.After(hWait):
			t.Fatal("upstream connection still open (G6)")
		}
		if cmds, data, ends, _ := up.snapshot(); ends != 0 || data != 23000 {
			t.Fatalf("upstream got %d octets and %d ends of data (%q), want 23000 and none (G8)", data, ends, cmds)
		}
		// The transaction and the session are logged, recipients and all.
		hWantLog(t, p, `msg=transaction .*rcpts=b@example.org:250 `, `msg=session .*end=signal`)
	})
	// Idle, by SIGTERM and by SIGINT (a session started by hand).
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run("idle-"+sig.String(), func(t *testing.T) {
			t.Parallel()
			up := startHSinkUp(t)
			p, c := hWilli(t, up.addr, "")
			c.Expect(220)
			c.Cmd("EHLO client.example")
			p.Cmd.Process.Signal(sig)
			rep, err := c.ReadReply()
			if err != nil || rep.String() != "421 4.3.2 Service shutting down, closing connection" {
				t.Fatalf("after %v: %q %v", sig, rep.Lines, err)
			}
			hExit(t, p, 0)
			hWantLog(t, p, `msg=session .*helo=client.example .*end=signal`)
		})
	}
}

// hWantLog checks that willi's log (its standard error) has a line
// matching each pattern.
func hWantLog(t *testing.T, p *williPipeProc, patterns ...string) {
	t.Helper()
	b, err := os.ReadFile(p.StderrPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, pat := range patterns {
		if !regexp.MustCompile(`(?m)` + pat).Match(b) {
			t.Errorf("no log line matches %q:\n%s", pat, b)
		}
	}
}

// TestHardeningProcessSIGPIPE: the client stops reading (its end of
// willi's output is closed) while willi still has replies to write: willi
// is not killed by SIGPIPE and exits 0 when the input ends.
func TestHardeningProcessSIGPIPE(t *testing.T) {
	up := startHSinkUp(t)
	p, c := hWilli(t, up.addr, "")
	c.Expect(220)
	p.Conn.r.Close()
	for range 50 {
		if _, err := io.WriteString(p.Conn.w, "NOOP\r\n"); err != nil {
			break
		}
	}
	p.Conn.w.Close()
	hExit(t, p, 0)
}

// TestHardeningProcessExitCodes: 0 for every session that ran, 1 when
// willi could not serve (bad config, after a 421 4.3.0), 2 for bad usage.
func TestHardeningProcessExitCodes(t *testing.T) {
	up := startHSinkUp(t)
	t.Run("QUIT", func(t *testing.T) {
		p, c := hWilli(t, up.addr, "")
		c.Expect(220)
		c.Cmd("QUIT")
		hExit(t, p, 0)
	})
	t.Run("client closes", func(t *testing.T) {
		p, c := hWilli(t, up.addr, "")
		c.Expect(220)
		p.Conn.Close()
		hExit(t, p, 0)
	})
	t.Run("timeout", func(t *testing.T) {
		p, c := hWilli(t, up.addr, `command_timeout = "1s"`)
		c.Expect(220)
		if rep := c.Expect(421); rep.String() != strings.TrimSuffix(hTimeout, "\r\n") {
			t.Fatalf("got %q", rep.Lines)
		}
		hExit(t, p, 0)
	})
	t.Run("too many errors", func(t *testing.T) {
		p, c := hWilli(t, up.addr, "")
		c.Expect(220)
		c.Send("FOO\r\nFOO\r\nFOO")
		c.Expect(500)
		c.Expect(500)
		c.Expect(500)
		c.Expect(421)
		hExit(t, p, 0)
	})
	t.Run("bad config", func(t *testing.T) {
		conf := writeConfig(t, t.TempDir(), "hostname = \"mx.test\"\nno_such_key = 1\n")
		p := startWilliPipes(t, buildWilli(t), conf)
		c := smtptest.NewClient(t, p.Conn)
		if rep := c.Expect(421); rep.String() != "421 4.3.0 Service unavailable: configuration error, closing connection" {
			t.Fatalf("got %q", rep.Lines)
		}
		hExit(t, p, 1)
	})
	t.Run("bad usage", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), hWait)
		defer cancel()
		err := exec.CommandContext(ctx, buildWilli(t), "-no-such-flag").Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Fatalf("willi -no-such-flag: %v, want exit status 2", err)
		}
	})
}
