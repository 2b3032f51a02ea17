package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// FuzzSession drives an in-process session into a phase of the dialogue,
// then sends the fuzz input and closes the client's sending side. Whatever
// the input, willi must not panic or hang, every reply must be well-formed
// (G5) and followed by nothing after a 421, 521 or 221 (G9), and the
// upstream must only receive what willi builds: EHLO, XCLIENT, MAIL, RCPT,
// DATA, RSET and QUIT in canonical syntax and in sequence, and message data
// only after its 354, canonical, ended once by CRLF "." CRLF (G2-G4).
//
// The helpers here (fzSession and fzUpstream) also serve the table tests of
// command_test.go and data_test.go.

// fzWait bounds every wait for willi; only a hang reaches it.
const fzWait = 10 * time.Second

// fzOptions shapes one session.
type fzOptions struct {
	xclient bool   // the upstream offers XCLIENT
	conf    string // extra top-level config lines
}

// fzSession is a session on a Unix socket pair, so that the client can
// close its sending side and still read every reply.
type fzSession struct {
	t      testing.TB
	client *net.UnixConn
	br     *bufio.Reader
	done   chan struct{}
	log    *syncBuffer
	up     *fzUpstreams
	closed bool   // willi closed the client connection
	final  string // the last reply line read; "" before the banner
}

func fzSocketPair(t testing.TB) (*net.UnixConn, *net.UnixConn) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), fmt.Sprintf("socketpair-%d", i))
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c.(*net.UnixConn)
	}
	return conns[0], conns[1]
}

// fzServe serves a session with cfg on srv in a goroutine, as for a client
// at 192.0.2.1:4321 named client.example.org on 192.0.2.10:25, its upstream
// connections made by dial. It returns the session's debug log and a
// channel closed when the session ends.
func fzServe(cfg *Config, srv net.Conn, dial func(ctx context.Context, network, addr string) (net.Conn, error)) (*syncBuffer, chan struct{}) {
	logBuf := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := newSession(cfg, srv, log)
	s.clientIP, s.clientPort = net.ParseIP("192.0.2.1").To4(), 4321
	s.localAddr = &net.TCPAddr{IP: net.ParseIP("192.0.2.10").To4(), Port: 25}
	s.dial = dial
	s.lookupName = func(context.Context, net.IP) string { return "client.example.org" }
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.serve()
	}()
	return logBuf, done
}

func startFzSession(t testing.TB, o fzOptions) *fzSession {
	t.Helper()
	conf := `hostname = "mx.test"
command_timeout = "5s"
upstream_command_timeout = "5s"
upstream_data_timeout = "5s"
max_message_size = 1000
` + o.conf + `
[[mapping]]
type = "static"
server = "up1.test:25"
`
	cfg, err := parseConfig(conf, "/nonexistent/willi.conf")
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	srv, cli := fzSocketPair(t)
	ups := &fzUpstreams{xclient: o.xclient}
	logBuf, done := fzServe(cfg, srv, ups.dial)
	fs := &fzSession{t: t, client: cli, br: bufio.NewReaderSize(cli, 1024), done: done, log: logBuf, up: ups}
	t.Cleanup(func() {
		cli.Close()
		select {
		case <-fs.done:
		case <-time.After(fzWait):
		}
		ups.closeAll()
	})
	if r := fs.reply(); r != "220 mx.test ESMTP\r\n" {
		fs.fatalf("banner %q", r)
	}
	return fs
}

func (fs *fzSession) fatalf(format string, a ...any) {
	fs.t.Helper()
	fs.t.Fatalf(format+"\nwilli's log:\n%s\nupstream received:\n%s", append(a, fs.log.String(), fs.up.received())...)
}

// send writes raw octets; willi reads them as it goes.
func (fs *fzSession) send(b string) {
	fs.t.Helper()
	fs.client.SetWriteDeadline(time.Now().Add(fzWait))
	if _, err := fs.client.Write([]byte(b)); err != nil {
		fs.fatalf("client write: %v", err)
	}
}

// reply reads one whole reply, checking each line (G5, G9); "" when willi
// closed the connection.
func (fs *fzSession) reply() string {
	fs.t.Helper()
	var out strings.Builder
	for {
		fs.client.SetReadDeadline(time.Now().Add(fzWait))
		l, err := fs.br.ReadString('\n')
		if err != nil {
			if l != "" {
				fs.fatalf("reply line without CRLF: %q (%v)", l, err)
			}
			if os.IsTimeout(err) {
				fs.fatalf("no reply within %v after %q", fzWait, out.String())
			}
			fs.closed = true
			if out.Len() > 0 {
				fs.fatalf("connection closed inside a reply: %q", out.String())
			}
			return ""
		}
		fs.checkLine(l)
		out.WriteString(l)
		if l[3] == ' ' {
			fs.checkReply(out.String())
			fs.final = l
			return out.String()
		}
	}
}

// checkLine: every line CRLF-terminated, "CODE[ -]TEXT", printable, at
// most 512 octets, and none after a 421, 521 or 221.
func (fs *fzSession) checkLine(l string) {
	fs.t.Helper()
	if c := fs.final; len(c) > 3 && (c[:4] == "421 " || c[:4] == "521 " || c[:4] == "221 ") {
		fs.fatalf("reply %q after %q", l, c)
	}
	if !strings.HasSuffix(l, "\r\n") || len(l) > 512 || !replyFormat.MatchString(strings.TrimSuffix(l, "\r\n")) || len(l) < 6 {
		fs.fatalf("malformed reply line %q", l)
	}
}

// checkReply: after the banner, every 2xx, 4xx and 5xx reply but EHLO's
// and HELO's carries an enhanced status code of its class on every line.
func (fs *fzSession) checkReply(r string) {
	fs.t.Helper()
	if fs.final == "" || strings.HasPrefix(r, "250-mx.test\r\n") || r == "250 mx.test\r\n" {
		return
	}
	for _, l := range strings.SplitAfter(r, "\r\n") {
		if l == "" || l[0] == '3' {
			continue
		}
		if e, _, _ := strings.Cut(l[4:len(l)-2], " "); !isEnhanced(e) || e[0] != l[0] {
			fs.fatalf("no enhanced status code in %q", l)
		}
	}
}

// cmd sends a command line and returns its reply.
func (fs *fzSession) cmd(line string) string {
	fs.t.Helper()
	fs.send(line + "\r\n")
	return fs.reply()
}

// expect sends a command and checks that the reply starts with prefix.
func (fs *fzSession) expect(line, prefix string) {
	fs.t.Helper()
	if r := fs.cmd(line); !strings.HasPrefix(r, prefix) {
		fs.fatalf("%q: got %q, want %s...", line, r, prefix)
	}
}

// finish sends in and closes the client's sending side, reads every reply
// left until willi closes, waits for the session to end and checks the
// upstreams. It returns the replies to in.
func (fs *fzSession) finish(in string) string {
	fs.t.Helper()
	closed := fs.closed
	go func() {
		if !closed {
			// willi reads as it goes; a write it never reads (it
			// closed first) is not an error here.
			fs.client.SetWriteDeadline(time.Now().Add(fzWait))
			fs.client.Write([]byte(in))
		}
		fs.client.CloseWrite()
	}()
	var out strings.Builder
	for !fs.closed {
		out.WriteString(fs.reply())
	}
	select {
	case <-fs.done:
	case <-time.After(fzWait):
		fs.fatalf("session did not end within %v of the client's EOF", fzWait)
	}
	fs.up.closeAll()
	if v := fs.up.violations(); len(v) > 0 {
		fs.fatalf("upstream protocol violations:\n%s", strings.Join(v, "\n"))
	}
	if n, q := fs.up.accepted(), strings.Count(out.String(), "queued as Q"); q > n {
		fs.fatalf("client told %d messages were queued, upstream accepted %d", q, n)
	}
	return out.String()
}

// fzUpstreams answers willi's dials with fake servers that follow RFC 5321
// strictly and record every deviation of willi's.
type fzUpstreams struct {
	xclient bool

	mu      sync.Mutex
	conns   []net.Conn
	viol    []string
	recv    strings.Builder
	msgs    int
	wg      sync.WaitGroup
	stopped bool
}

func (u *fzUpstreams) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if addr != "up1.test:25" {
		return nil, fmt.Errorf("dial %s: connection refused", addr)
	}
	a, b := net.Pipe()
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.stopped {
		a.Close()
		b.Close()
		return nil, fmt.Errorf("dial %s: connection refused", addr)
	}
	u.conns = append(u.conns, b)
	u.wg.Add(1)
	go u.serve(b, len(u.conns))
	return a, nil
}

func (u *fzUpstreams) violate(n int, format string, a ...any) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.viol = append(u.viol, fmt.Sprintf("upstream connection %d: ", n)+fmt.Sprintf(format, a...))
}

func (u *fzUpstreams) violations() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.viol...)
}

func (u *fzUpstreams) received() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.recv.String()
}

func (u *fzUpstreams) accepted() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.msgs
}

// closeAll ends every upstream connection and waits for their servers.
func (u *fzUpstreams) closeAll() {
	u.mu.Lock()
	u.stopped = true
	for _, c := range u.conns {
		c.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
}

var (
	// What willi may send, and nothing else.
	fzPath     = `<[^<>\s\x00-\x1f\x7f]*>`
	fzSender   = `<(?:"(?:[^"\\\x00-\x1f\x7f]|\\["\\])*"@)?[^<>"\s\x00-\x1f\x7f]*>` // a quoted local part is kept
	fzMailLine = regexp.MustCompile(`^MAIL FROM:` + fzSender + `( SIZE=[0-9]{1,20})?( BODY=(7BIT|8BITMIME))?( SMTPUTF8)?$`)
	fzRcptLine = regexp.MustCompile(`^RCPT TO:<[^<>\s\x00-\x1f\x7f]+>$`)
	fzXCLIENT  = regexp.MustCompile(`^XCLIENT( (HELO|PROTO|PORT|NAME|ADDR)=[\x21-\x3c\x3e-\x7e]+)+$`)
	fzGreeting = regexp.MustCompile(`^(EHLO|HELO) [^\x00-\x08\x0a-\x1f\x7f]+$`)
)

// serve is one fake upstream connection.
func (u *fzUpstreams) serve(c net.Conn, n int) {
	defer u.wg.Done()
	defer c.Close()
	r := bufio.NewReaderSize(c, 4096)
	w := func(s string) bool {
		c.SetWriteDeadline(time.Now().Add(fzWait))
		_, err := c.Write([]byte(s))
		return err == nil
	}
	ehlo := "250-up1.test\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
	if u.xclient {
		ehlo += "250-XCLIENT NAME ADDR PORT PROTO HELO\r\n"
	}
	ehlo += "250 ENHANCEDSTATUSCODES\r\n"
	if !w("220 up1.test ESMTP\r\n") {
		return
	}
	const (
		stGreet = iota // banner or XCLIENT's 220 sent: EHLO/HELO next
		stReady
		stMail
		stRcpt
	)
	st, xclientSeen := stGreet, false
	for {
		c.SetReadDeadline(time.Now().Add(2 * fzWait))
		line, err := r.ReadSlice('\n')
		u.mu.Lock()
		u.recv.Write(line)
		u.mu.Unlock()
		if err != nil {
			if len(line) > 0 {
				u.violate(n, "incomplete line %q (%v)", line, err)
			}
			return
		}
		if len(line) > 512 || !bytes.HasSuffix(line, []byte("\r\n")) || bytes.ContainsAny(line[:len(line)-2], "\r\n\x00") {
			u.violate(n, "not a canonical command line: %q", line)
			return
		}
		l := string(line[:len(line)-2])
		verb, _, _ := strings.Cut(l, " ")
		switch {
		case verb == "EHLO" || verb == "HELO":
			// Only after the banner or XCLIENT's new greeting.
			if st != stGreet || !fzGreeting.MatchString(l) {
				u.violate(n, "greeting out of place or malformed: %q (state %d)", l, st)
			}
			st = stReady
			if verb == "HELO" {
				w("250 up1.test\r\n")
			} else {
				w(ehlo)
			}
		case verb == "XCLIENT":
			// After EHLO, or after a previous XCLIENT (Postfix answers
			// each with a new greeting).
			if !u.xclient || !(st == stReady || st == stGreet && xclientSeen) || !fzXCLIENT.MatchString(l) {
				u.violate(n, "XCLIENT out of place or malformed: %q (state %d)", l, st)
			}
			for _, a := range strings.Fields(l)[1:] {
				_, v, _ := strings.Cut(a, "=")
				if _, err := xtextDecode(v); err != nil || len(v) > 255 {
					u.violate(n, "bad XCLIENT value %q", a)
				}
			}
			xclientSeen, st = true, stGreet
			w("220 up1.test ESMTP\r\n")
		case verb == "MAIL":
			if st != stReady || !fzMailLine.MatchString(l) {
				u.violate(n, "MAIL out of place or malformed: %q (state %d)", l, st)
			}
			st = stMail
			w("250 2.1.0 Ok\r\n")
		case verb == "RCPT":
			if st != stMail && st != stRcpt || !fzRcptLine.MatchString(l) {
				u.violate(n, "RCPT out of place or malformed: %q (state %d)", l, st)
			}
			if strings.HasPrefix(l, "RCPT TO:<reject") {
				w("550 5.1.1 <" + l[9:len(l)-1] + ">: Recipient address rejected\r\n")
				continue
			}
			st = stRcpt
			w("250 2.1.5 Ok\r\n")
		case l == "DATA":
			if st != stRcpt {
				u.violate(n, "DATA without an accepted recipient")
			}
			st = stReady
			if !w("354 End data with <CR><LF>.<CR><LF>\r\n") {
				return
			}
			if !u.readData(n, r) {
				return
			}
			u.mu.Lock()
			u.msgs++
			q := u.msgs
			u.mu.Unlock()
			w(fmt.Sprintf("250 2.0.0 Ok: queued as Q%d\r\n", q))
		case l == "RSET":
			if st != stGreet {
				st = stReady
			}
			w("250 2.0.0 Ok\r\n")
		case l == "QUIT":
			w("221 2.0.0 Bye\r\n")
			return
		default:
			u.violate(n, "command willi does not send: %q", l)
			w("502 5.5.1 Error: command not implemented\r\n")
		}
	}
}

// readData reads one message strictly: CRLF lines without NUL, to the
// first CRLF "." CRLF; it reports false when the connection ended first (an
// abort, which is allowed), and flags any octet sent after the end of data
// before the reply (a second message riding on the first).
func (u *fzUpstreams) readData(n int, r *bufio.Reader) bool {
	eod, prev := 2, byte('\n') // after the DATA line's CRLF
	var data []byte
	for eod < 5 {
		c, err := r.ReadByte()
		if err != nil {
			u.mu.Lock()
			u.recv.Write(data)
			u.mu.Unlock()
			return false
		}
		data = append(data, c)
		switch {
		case c == 0:
			u.violate(n, "NUL in message data")
		case c == '\n' && prev != '\r':
			u.violate(n, "bare LF in message data")
		case prev == '\r' && c != '\n':
			u.violate(n, "bare CR in message data")
		}
		prev = c
		switch {
		case c == '\r' && eod == 3:
			eod = 4
		case c == '\r':
			eod = 1
		case c == '\n' && (eod == 1 || eod == 4):
			eod++
		case c == '.' && eod == 2:
			eod = 3
		default:
			eod = 0
		}
	}
	u.mu.Lock()
	u.recv.Write(data)
	u.mu.Unlock()
	if k := r.Buffered(); k > 0 {
		b, _ := r.Peek(k)
		u.violate(n, "%q sent after the end of data, before its reply", b)
	}
	return true
}

// fzPhases are the states FuzzSession starts the fuzz input from.
var fzPhases = []struct {
	name string
	o    fzOptions
	run  func(fs *fzSession)
}{
	{name: "greeting", run: func(fs *fzSession) {}},
	{name: "ehlo", run: func(fs *fzSession) { fs.expect("EHLO client.example", "250-mx.test") }},
	{name: "helo", run: func(fs *fzSession) { fs.expect("HELO client.example", "250 mx.test") }},
	{name: "mail", run: func(fs *fzSession) {
		fs.expect("EHLO client.example", "250-")
		fs.expect("MAIL FROM:<a@example.net>", "250 ")
	}},
	{name: "rcpt", run: fzToRcpt},
	{name: "data", run: func(fs *fzSession) {
		fzToRcpt(fs)
		fs.expect("DATA", "354 ")
	}},
	{name: "starttls-502", run: func(fs *fzSession) {
		fs.expect("EHLO client.example", "250-")
		fs.expect("STARTTLS", "502 5.5.1")
	}},
	{name: "after-message", run: func(fs *fzSession) {
		fzToRcpt(fs)
		fs.expect("DATA", "354 ")
		fs.send("hello\r\n..\r\n")
		fs.expect(".", "250 2.0.0 Ok: queued as Q1")
	}},
	{name: "after-refused-data", run: func(fs *fzSession) {
		fzToRcpt(fs)
		fs.expect("DATA", "354 ")
		fs.send("bare\nLF\r\n")
		fs.expect(".", "550 5.5.2")
	}},
	{name: "rejected-rcpt", run: func(fs *fzSession) {
		fzToRcpt(fs)
		fs.expect("RCPT TO:<reject@example.org>", "550 5.1.1")
	}},
	{name: "xclient-rcpt", o: fzOptions{xclient: true}, run: func(fs *fzSession) {
		fs.expect("EHLO x ADDR=127.0.0.1 NAME=localhost", "250-")
		fs.expect("MAIL FROM:<a@example.net> SIZE=100 BODY=8BITMIME", "250 ")
		fs.expect("RCPT TO:<b@example.org>", "250 ")
	}},
	{name: "xclient-data", o: fzOptions{xclient: true}, run: func(fs *fzSession) {
		fs.expect("HELO [192.0.2.1]", "250 ")
		fs.expect("MAIL FROM:<>", "250 ")
		fs.expect("RCPT TO:<b@example.org>", "250 ")
		fs.expect("DATA", "354 ")
	}},
}

func fzToRcpt(fs *fzSession) {
	fs.expect("EHLO client.example", "250-")
	fs.expect("MAIL FROM:<a@example.net>", "250 ")
	fs.expect("RCPT TO:<b@example.org>", "250 ")
}

// fzSeeds are inputs worth starting from in every phase.
var fzSeeds = []string{
	"",
	"QUIT\r\n",
	"NOOP\r\nRSET\r\nQUIT\r\n",
	"EHLO a\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n",
	"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nx\n.\nMAIL FROM:<e@f>\r\nRCPT TO:<g@h>\r\nDATA\r\nevil\r\n.\r\n",
	"hi\r\n.\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
	"x\r.\rRCPT TO:<evil@x>\r\n.\r\n",
	"x\r\n.\x00\r\nDATA\r\n.\r\n",
	"..\r\n...\r\n.\r\n",
	"RCPT TO:<b@example.org> NOTIFY=NEVER\r\nRCPT TO:<reject@x>\r\nDATA\r\n.\r\n",
	"XCLIENT ADDR=127.0.0.1\r\nXFORWARD NAME=x\r\nAUTH PLAIN AAAA\r\nSTARTTLS\r\nBDAT 10 LAST\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
	"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
	"NOOP\nNOOP\r\n",
	"NO\x00OP\r\nRSET\r\n",
	strings.Repeat("A", 600) + "\r\nNOOP\r\n",
	strings.Repeat("x", 1200) + "\r\n.\r\nQUIT\r\n",
	"MAIL FROM:<a@b.example> SIZE=99999999\r\nMAIL FROM:<a@b.example> BODY=BINARYMIME\r\n",
	"EHLO a b\tc\r\nMAIL FROM:<\"q\"@x>\r\nRCPT TO:<@a,@b:c@d.example>\r\nRCPT TO:<ü@d.example>\r\n",
	"RSET\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nRSET\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
}

func FuzzSession(f *testing.F) {
	for i := range fzPhases {
		for _, s := range fzSeeds {
			f.Add(uint8(i), []byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, phase uint8, in []byte) {
		p := fzPhases[int(phase)%len(fzPhases)]
		fs := startFzSession(t, p.o)
		p.run(fs)
		fs.finish(string(in))
	})
}
