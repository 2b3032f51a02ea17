package main

// Hardening tests: one table per class of hostile input or fault (the
// README's Security section lists the guarantees). Each case runs a Session
// in-process over net.Pipe: the client's exact bytes go in, every byte
// willi answers is compared exactly, and the upstreams are scripted fakes
// whose received bytes are compared exactly too. After every case the
// invariants G1-G9 are checked on both streams: replies well formed and
// closing after 421/521/221, no 250 to a message the upstream did not
// accept, and nothing upstream that willi did not build (every command line
// one of willi's, every message canonical with exactly one end of data).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// The standard dialogue's pieces, as sent and as answered.
const (
	hBanner  = "220 mx.test ESMTP\r\n"
	hEhloIn  = "EHLO client.example\r\n"
	hMailIn  = "MAIL FROM:<a@example.net>\r\n"
	hRcptIn  = "RCPT TO:<b@example.org>\r\n"
	hEnvIn   = hEhloIn + hMailIn + hRcptIn
	hDataIn  = hEnvIn + "DATA\r\n"
	hQuit    = "QUIT\r\n"
	hBye     = "221 2.0.0 Bye\r\n"
	hMailOK  = "250 2.1.0 Ok\r\n"
	hRcptOK  = "250 2.1.5 Ok\r\n" // the fake upstream's, relayed
	h354     = "354 End data with <CR><LF>.<CR><LF>\r\n"
	hOK      = "250 2.0.0 Ok\r\n"
	hUpEhlo  = "EHLO mx.test\r\n"
	hUpMail  = "MAIL FROM:<a@example.net>\r\n"
	hUpRcpt  = "RCPT TO:<b@example.org>\r\n"
	hUpEnv   = hUpEhlo + hUpMail + hUpRcpt
	hUpData  = hUpEnv + "DATA\r\n"
	hBadData = "550 5.5.2 Error: message contains bare CR, bare LF or NUL; not delivered\r\n"
	hTooBig  = "552 5.3.4 Error: message file too big\r\n"
	hTimeout = "421 4.4.2 Error: timeout exceeded, closing connection\r\n"
	hLost    = "451 4.4.2 Error: upstream connection lost, try again later\r\n"
	hUpProto = "451 4.5.0 Error: upstream protocol error, try again later\r\n"
	hUpDown  = "451 4.4.1 Error: no upstream server reachable, try again later\r\n"
	hUpSlow  = "451 4.4.2 Error: upstream timed out, try again later\r\n"
	hNoRelay = "550 5.7.1 <%s>: Relay access denied\r\n"
)

// hEhlo is willi's EHLO reply with the default SIZE.
var hEhlo = hEhloReply(52428800, false)

func hEhloReply(size int64, starttls bool) string {
	s := fmt.Sprintf("250-mx.test\r\n250-PIPELINING\r\n250-SIZE %d\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n", size)
	if starttls {
		return s + "250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n"
	}
	return s + "250 ENHANCEDSTATUSCODES\r\n"
}

// hEnvOut is the client's view of banner, EHLO, MAIL and RCPT.
const hEnvOut = "220 mx.test ESMTP\r\n250-mx.test\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n" + hMailOK + hRcptOK

// hQueued is the fake upstream's reply to its n-th end of data.
func hQueued(n int) string { return fmt.Sprintf("250 2.0.0 Ok: queued as Q%d\r\n", n) }

// hPartial in an expected upstream stream: what follows it may have been
// received in part or not at all (data withheld from the chunk where a
// violation was found depends on how the client's bytes were segmented).
const hPartial = "\x00partial\x00"

func hPartialOf(head, maybe string) string { return head + hPartial + maybe }

// hcase is one case of a hardening table.
type hcase struct {
	name   string
	conf   string   // top-level config lines (override the defaults)
	tables string   // config tables; a [[mapping]] replaces the static default
	csv    string   // routes.csv (a csv mapping is put first)
	up     upScript // how every upstream connection answers
	in     string   // the client's bytes
	out    string   // every byte the client must receive before willi closes
	ups    []string // what each upstream connection must receive, in dial order
	// upTLS is the fake upstreams' certificate for their STARTTLS.
	upTLS *tls.Config
}

// upScript says how the fake upstreams answer. Keys: "banner"; a verb
// ("EHLO", "MAIL", "DATA", ...); a whole command line ("RCPT TO:<x@y>"),
// which wins over its verb; "data" for the first line of message data; "."
// for the end of data; "EHLO+tls" for EHLO after STARTTLS; "ext" for extra
// EHLO keywords separated by "|". Values are the raw bytes to send, or
// <close> (close without a word) or <stall> (answer nothing more), each
// optionally after <sleep DURATION>.
type upScript map[string]string

// fakeUpConn is what one upstream connection saw.
type fakeUpConn struct {
	mu     sync.Mutex
	got    bytes.Buffer
	bad    []string // what willi could not have built
	sent   []string // every reply sent, in order
	eod    []string // the reply sent to each end of data received
	n354   int
	closed chan struct{}
}

func (f *fakeUpConn) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.got.String()
}

// hUpstreamCommand matches every command line willi builds for an upstream.
// The greeting after XCLIENT carries the client's own HELO name, which
// may hold a tab or 8-bit octets, never CR, LF or NUL.
var hUpstreamCommand = regexp.MustCompile(`^(?:(?:EHLO|HELO) [^\x00-\x20\x7f][^\x00-\x08\x0a-\x1f\x7f]*` +
	`|STARTTLS|RSET|NOOP|QUIT|DATA` +
	`|MAIL FROM:<(?:"(?:[^"\\\x00-\x1f\x7f]|\\["\\])*"@)?[^\x00-\x20<>"\x7f]*>(?: SIZE=[1-9][0-9]*)?(?: BODY=(?:7BIT|8BITMIME))?(?: SMTPUTF8)?` +
	`|RCPT TO:<[^\x00-\x20<>\x7f]+>` +
	`|XCLIENT(?: (?:NAME|ADDR|PORT|PROTO|HELO|LOGIN|DESTADDR|DESTPORT)=[!-~]+)+` +
	`|PROXY (?:TCP4|TCP6|UNKNOWN)[ -~]*` +
	`)\r\n$`)

// fakeUpstreams hands willi's dials to scripted servers.
type fakeUpstreams struct {
	t      testing.TB
	script upScript
	tlsCfg *tls.Config
	fn     *fakeNet
	mu     sync.Mutex
	conns  []*fakeUpConn
	queued int // ends of data accepted, over all connections
}

func newFakeUpstreams(t testing.TB, script upScript, tlsCfg *tls.Config) *fakeUpstreams {
	fn := &fakeNet{wanted: map[string]bool{}, pending: map[string]chan net.Conn{}}
	for _, n := range []string{"up1", "up2", "up3"} {
		fn.wanted[n] = true
	}
	return &fakeUpstreams{t: t, script: script, tlsCfg: tlsCfg, fn: fn}
}

func (f *fakeUpstreams) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := f.fn.dial(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(addr)
	fc := &fakeUpConn{closed: make(chan struct{})}
	f.mu.Lock()
	f.conns = append(f.conns, fc)
	f.mu.Unlock()
	go f.serve(<-f.fn.ch(strings.TrimSuffix(host, ".test")), fc)
	return c, nil
}

// hAsyncConn writes in order without blocking the writer, as a socket
// buffer does; a net.Pipe has none, and a TLS handshake over it can
// deadlock when one side stops reading.
type hAsyncConn struct {
	net.Conn
	ch   chan []byte
	wg   sync.WaitGroup
	once sync.Once
}

func newHAsyncConn(c net.Conn) *hAsyncConn {
	a := &hAsyncConn{Conn: c, ch: make(chan []byte, 256)}
	go func() {
		for b := range a.ch {
			c.Write(b)
			a.wg.Done()
		}
	}()
	return a
}

func (a *hAsyncConn) Write(b []byte) (int, error) {
	a.wg.Add(1)
	a.ch <- append([]byte(nil), b...)
	return len(b), nil
}

// flush waits until everything written went out (or failed).
func (a *hAsyncConn) flush() { a.wg.Wait() }

func (a *hAsyncConn) Close() error {
	a.flush()
	a.once.Do(func() { close(a.ch) })
	return a.Conn.Close()
}

func (f *fakeUpstreams) serve(raw net.Conn, fc *fakeUpConn) {
	defer close(fc.closed)
	ac := newHAsyncConn(raw)
	var c net.Conn = ac
	defer ac.Close()
	r := bufio.NewReader(c)
	stalled, tlsOn := false, false
	// say sends the script's answer for key (def when it has none); false
	// when the connection was closed.
	say := func(def string, keys ...string) (string, bool) {
		v, ok := "", false
		for _, k := range keys {
			if v, ok = f.script[k]; ok {
				break
			}
		}
		if !ok {
			v = def
		}
		if rest, ok := strings.CutPrefix(v, "<sleep "); ok {
			d, after, _ := strings.Cut(rest, ">")
			pause, _ := time.ParseDuration(d)
			time.Sleep(pause)
			v = after
		}
		switch v {
		case "<close>":
			ac.Close()
			return "", false
		case "<stall>":
			stalled = true
			return "", true
		case "":
			return "", true
		}
		fc.mu.Lock()
		fc.sent = append(fc.sent, v)
		fc.mu.Unlock()
		c.Write([]byte(v))
		return v, true
	}
	read := func() (string, error) {
		l, err := r.ReadString('\n')
		fc.mu.Lock()
		fc.got.WriteString(l)
		fc.mu.Unlock()
		return l, err
	}
	bad := func(format string, a ...any) {
		fc.mu.Lock()
		fc.bad = append(fc.bad, fmt.Sprintf(format, a...))
		fc.mu.Unlock()
	}
	if _, ok := say("220 up.test ESMTP\r\n", "banner"); !ok {
		return
	}
	for {
		line, err := read()
		if err != nil {
			if line != "" {
				bad("incomplete command line %q", line)
			}
			return
		}
		if stalled {
			continue
		}
		if !hUpstreamCommand.MatchString(line) {
			bad("command line willi does not build: %q", line)
		}
		cmd := strings.TrimSuffix(line, "\r\n")
		verb, _, _ := strings.Cut(cmd, " ")
		verb, _, _ = strings.Cut(verb, ":")
		switch verb {
		case "PROXY":
			if fc.got.Len() != len(line) {
				bad("PROXY header not first: %q", line)
			}
		case "EHLO":
			exts := []string{"PIPELINING", "SIZE 100000000", "8BITMIME", "SMTPUTF8"}
			if x := f.script["ext"]; x != "" {
				exts = append(exts, strings.Split(x, "|")...)
			}
			def := "250-up.test\r\n"
			for _, e := range exts {
				if tlsOn && e == "STARTTLS" {
					continue
				}
				def += "250-" + e + "\r\n"
			}
			def += "250 ENHANCEDSTATUSCODES\r\n"
			keys := []string{cmd, "EHLO"}
			if tlsOn {
				keys = []string{"EHLO+tls"}
			}
			if _, ok := say(def, keys...); !ok {
				return
			}
		case "HELO":
			if _, ok := say("250 up.test\r\n", cmd, "HELO"); !ok {
				return
			}
		case "XCLIENT":
			if _, ok := say("220 up.test ESMTP\r\n", cmd, "XCLIENT"); !ok {
				return
			}
		case "MAIL":
			if _, ok := say("250 2.1.0 Ok\r\n", cmd, "MAIL"); !ok {
				return
			}
		case "RCPT":
			if _, ok := say("250 2.1.5 Ok\r\n", cmd, "RCPT"); !ok {
				return
			}
		case "RSET", "NOOP":
			if _, ok := say("250 2.0.0 Ok\r\n", cmd, verb); !ok {
				return
			}
		case "QUIT":
			say("221 2.0.0 Bye\r\n", "QUIT")
			ac.flush()
			// Read on so that a command after QUIT would be seen.
			c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if l, _ := read(); l != "" {
				bad("after QUIT: %q", l)
			}
			return
		case "STARTTLS":
			v, ok := say("220 2.0.0 Ready to start TLS\r\n", "STARTTLS")
			if !ok {
				return
			}
			if !strings.HasPrefix(v, "220 ") || stalled {
				continue
			}
			ac.flush()
			if f.tlsCfg == nil {
				bad("STARTTLS without a certificate")
				return
			}
			tc := tls.Server(c, f.tlsCfg)
			tc.SetDeadline(time.Now().Add(20 * time.Second))
			if err := tc.Handshake(); err != nil {
				fc.mu.Lock()
				fc.got.WriteString("<tls failed>")
				fc.mu.Unlock()
				return
			}
			tc.SetDeadline(time.Time{})
			c, r, tlsOn = tc, bufio.NewReader(tc), true
			fc.mu.Lock()
			fc.got.WriteString("<tls>")
			fc.mu.Unlock()
		case "DATA":
			v, ok := say("354 End data with <CR><LF>.<CR><LF>\r\n", "DATA")
			if !ok {
				return
			}
			if !strings.HasPrefix(v, "354") {
				continue
			}
			fc.mu.Lock()
			fc.n354++
			fc.mu.Unlock()
			first := true
			for {
				l, err := read()
				if err != nil {
					return // willi aborted: no end of data
				}
				if l == ".\r\n" {
					break
				}
				body := strings.TrimSuffix(l, "\r\n")
				if len(body) == len(l) || strings.ContainsAny(body, "\r\n\x00") {
					bad("non-canonical data line %q", l)
				}
				if first {
					first = false
					if _, ok := say("", "data"); !ok {
						return
					}
				}
			}
			f.mu.Lock()
			f.queued++
			n := f.queued
			f.mu.Unlock()
			v, ok = say(fmt.Sprintf("250 2.0.0 Ok: queued as Q%d\r\n", n), ".")
			if !ok {
				return
			}
			fc.mu.Lock()
			fc.eod = append(fc.eod, v)
			fc.mu.Unlock()
		default:
			if _, ok := say("502 5.5.1 unexpected\r\n", cmd); !ok {
				return
			}
		}
	}
}

const hWait = 20 * time.Second // only against hangs; never a timing assertion

func hConfig(t testing.TB, c hcase) *Config {
	t.Helper()
	dir := t.TempDir()
	conf := c.conf + "\n"
	for _, d := range []string{`hostname = "mx.test"`, `command_timeout = "10s"`, `upstream_command_timeout = "10s"`,
		`upstream_data_timeout = "10s"`, `upstream_connect_timeout = "10s"`} {
		key, _, _ := strings.Cut(d, " ")
		if !regexp.MustCompile(`(?m)^` + key + `\s*=`).MatchString(conf) {
			conf = d + "\n" + conf
		}
	}
	if c.csv != "" {
		if err := os.WriteFile(filepath.Join(dir, "routes.csv"), []byte(c.csv), 0o644); err != nil {
			t.Fatal(err)
		}
		conf += "[[mapping]]\ntype = \"csv\"\nfile = \"routes.csv\"\n"
	}
	if c.csv == "" && !strings.Contains(c.tables, "[[mapping]]") {
		conf += "[[mapping]]\ntype = \"static\"\nserver = \"up1.test:25\"\n"
	}
	conf += c.tables + "\n"
	cfg, err := parseConfig(conf, filepath.Join(dir, "willi.conf"))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, conf)
	}
	return cfg
}

// hResult is what one run of a case produced.
type hResult struct {
	out    string
	closed bool // willi closed the client connection
	ups    []*fakeUpConn
	log    *syncBuffer
	hang   string // what did not end
}

// hSession starts willi's side of a session on conn.
func hSession(t testing.TB, cfg *Config, conn net.Conn, f *fakeUpstreams) (done chan struct{}, log *syncBuffer) {
	log = &syncBuffer{}
	s := newSession(cfg, conn, slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})))
	s.clientIP, s.clientPort = net.ParseIP("192.0.2.1").To4(), 4321
	s.localAddr = &net.TCPAddr{IP: net.ParseIP("192.0.2.10").To4(), Port: 25}
	s.dial = f.dial
	s.lookupName = func(context.Context, net.IP) string { return "client.example.org" }
	done = make(chan struct{})
	go func() {
		defer close(done)
		s.serve()
	}()
	return done, log
}

// writeSegments sends in as the given segments, each one Write (each one
// read separately by willi, as TCP segments may be).
func hSplit(in string, cuts ...int) []string {
	var segs []string
	prev := 0
	for _, c := range cuts {
		if c > prev && c < len(in) {
			segs = append(segs, in[prev:c])
			prev = c
		}
	}
	return append(segs, in[prev:])
}

func hOneByte(in string) []string {
	segs := make([]string, len(in))
	for i := 0; i < len(in); i++ {
		segs[i] = in[i : i+1]
	}
	return segs
}

// hReadAll reads until willi closes (or hWait passes).
func hReadAll(conn net.Conn, o *hOutput) (string, bool) {
	conn.SetReadDeadline(time.Now().Add(hWait))
	buf := make([]byte, 4096)
	for {
		n, err := conn.Read(buf)
		o.add(buf[:n], err != nil)
		if err != nil {
			o.mu.Lock()
			defer o.mu.Unlock()
			return o.buf.String(), err == io.EOF || err == io.ErrClosedPipe || err == io.ErrUnexpectedEOF
		}
	}
}

// hOutput is what the client has read so far, for a writer that waits for
// replies.
type hOutput struct {
	mu     sync.Mutex
	cond   *sync.Cond
	buf    bytes.Buffer
	ended  bool
	counts []int // offsets where each complete reply ends
}

func newHOutput() *hOutput {
	o := &hOutput{}
	o.cond = sync.NewCond(&o.mu)
	return o
}

func (o *hOutput) add(b []byte, end bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	start := o.buf.Len()
	o.buf.Write(b)
	out := o.buf.Bytes()
	for i := start; i < len(out); i++ {
		if out[i] != '\n' {
			continue
		}
		ls := bytes.LastIndexByte(out[:i], '\n') + 1
		if i-ls >= 4 && out[ls+3] == ' ' {
			o.counts = append(o.counts, i+1)
		}
	}
	o.ended = o.ended || end
	o.cond.Broadcast()
}

// reply waits for the n-th complete reply (1: the banner) and returns it,
// or "" when the connection ended first.
func (o *hOutput) reply(n int) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	for len(o.counts) < n && !o.ended {
		o.cond.Wait()
	}
	if len(o.counts) < n {
		return ""
	}
	start := 0
	if n > 1 {
		start = o.counts[n-2]
	}
	return string(o.buf.Bytes()[start:o.counts[n-1]])
}

// hWrite sends the client's bytes cut into segs as a client that keeps
// RFC 2920 does: after a DATA command it waits for the reply before it
// sends more (its message when the reply is 354), so a segment that spans
// a DATA command is cut after it, and a message whose DATA was refused is
// not sent. Every command line gets one reply;
// replies is how many come before the first (1: the banner).
func hWrite(cli net.Conn, segs []string, o *hOutput, replies int) {
	in := strings.Join(segs, "")
	var bounds []int // ends of segments
	n := 0
	for _, sg := range segs {
		n += len(sg)
		bounds = append(bounds, n)
	}
	written := 0
	send := func(to int) bool {
		for _, b := range bounds {
			if b <= written {
				continue
			}
			end := min(b, to)
			if _, err := cli.Write([]byte(in[written:end])); err != nil {
				return false
			}
			written = end
			if end == to {
				break
			}
		}
		return true
	}
	pos := 0
	for pos < len(in) {
		nl := strings.IndexByte(in[pos:], '\n')
		if nl < 0 {
			break
		}
		line := in[pos : pos+nl+1]
		pos += nl + 1
		replies++
		if !strings.EqualFold(line, "DATA\r\n") {
			continue
		}
		if !send(pos) {
			return
		}
		go354 := strings.HasPrefix(o.reply(replies), "354")
		end := strings.Index(in[pos-2:], "\r\n.\r\n")
		if end < 0 {
			if !go354 {
				continue // no message follows: commands do
			}
			break
		}
		if !go354 {
			// The message stays unsent.
			if !send(pos) {
				return
			}
			written = pos + end + 3
			pos = written
			continue
		}
		pos += end + 3
		replies++ // the verdict on the message
	}
	send(len(in))
}

// hRun runs c once with the client's bytes cut into segs (nil: one
// segment) and returns what happened, after willi and every upstream
// connection ended.
func hRun(t testing.TB, c hcase, cfg *Config, segs []string) hResult {
	t.Helper()
	if segs == nil {
		segs = []string{c.in}
	}
	f := newFakeUpstreams(t, c.up, c.upTLS)
	srv, cli := net.Pipe()
	done, log := hSession(t, cfg, srv, f)
	o := newHOutput()
	go hWrite(cli, segs, o, 1)
	out, closed := hReadAll(cli, o)
	cli.Close()
	return hFinish(t, out, closed, done, log, f)
}

func hFinish(t testing.TB, out string, closed bool, done chan struct{}, log *syncBuffer, f *fakeUpstreams) hResult {
	res := hResult{out: out, closed: closed, log: log}
	select {
	case <-done:
	case <-time.After(hWait):
		res.hang = "session did not end (G6)"
	}
	f.mu.Lock()
	res.ups = append([]*fakeUpConn(nil), f.conns...)
	f.mu.Unlock()
	for i, u := range res.ups {
		if res.hang != "" {
			break
		}
		select {
		case <-u.closed:
		case <-time.After(hWait):
			res.hang = fmt.Sprintf("upstream connection %d still open after the session ended (G6)", i+1)
		}
	}
	return res
}

// check compares a run with the case and checks the invariants.
func (r hResult) check(t testing.TB, c hcase, how string) {
	t.Helper()
	if msg := r.verify(c, how); msg != "" {
		t.Fatal(msg)
	}
}

// verify returns what is wrong with a run ("" when nothing is); it may be
// called from any goroutine.
func (r hResult) verify(c hcase, how string) (msg string) {
	type failure struct{ msg string }
	defer func() {
		if p := recover(); p != nil {
			f, ok := p.(failure)
			if !ok {
				panic(p)
			}
			var ups []string
			for _, u := range r.ups {
				ups = append(ups, fmt.Sprintf("%q", u.String()))
			}
			msg = fmt.Sprintf("%s (%s): %s\nclient in:  %q\nclient got: %q\nupstreams got: %s\nwilli's log:\n%s",
				c.name, how, f.msg, c.in, r.out, strings.Join(ups, ", "), r.log)
		}
	}()
	fail := func(format string, a ...any) { panic(failure{fmt.Sprintf(format, a...)}) }
	if r.hang != "" {
		fail("%s", r.hang)
	}
	if msg := hCheckReplies(r.out); msg != "" {
		fail("%s", msg)
	}
	if !r.closed {
		fail("willi did not close the connection")
	}
	// G1: a 354 only after an upstream 354; a 2xx to an end of data only
	// as the upstream's 2xx to that end of data.
	var n354 int
	eods := map[string]int{}
	for _, u := range r.ups {
		u.mu.Lock()
		n354 += u.n354
		for _, e := range u.eod {
			eods[e]++
		}
		for _, b := range u.bad {
			u.mu.Unlock()
			fail("upstream received %s (G2-G4)", b)
		}
		u.mu.Unlock()
	}
	reps := hSplitReplies(r.out)
	c354 := 0
	for i, rep := range reps {
		if !strings.HasPrefix(rep, "354") {
			continue
		}
		c354++
		if i+1 < len(reps) && reps[i+1][0] == '2' {
			if eods[reps[i+1]] == 0 {
				fail("client got %q for a message the upstream did not accept (G1)", reps[i+1])
			}
			eods[reps[i+1]]--
		}
	}
	if c354 > n354 {
		fail("client got %d 354 replies, the upstreams sent %d (G1)", c354, n354)
	}
	if r.out != c.out {
		fail("client got the wrong replies; want %q", c.out)
	}
	if len(r.ups) != len(c.ups) {
		fail("%d upstream connections, want %d", len(r.ups), len(c.ups))
	}
	for i, u := range r.ups {
		got, want := u.String(), c.ups[i]
		if head, maybe, ok := strings.Cut(want, hPartial); ok {
			if !strings.HasPrefix(got, head) || !strings.HasPrefix(maybe, got[len(head):]) {
				fail("upstream %d got %q, want %q then a prefix of %q", i+1, got, head, maybe)
			}
		} else if got != want {
			fail("upstream %d got %q, want %q", i+1, got, want)
		}
	}
	return ""
}

var hEnhanced = regexp.MustCompile(`^[245]\.[0-9]{1,3}\.[0-9]{1,3}( |$)`)

// hCheckReplies checks G5 and G9 on everything the client received.
func hCheckReplies(out string) string {
	if out != "" && !strings.HasSuffix(out, "\r\n") {
		return fmt.Sprintf("output does not end in CRLF: %q", out)
	}
	reps := hSplitReplies(out)
	for i, rep := range reps {
		lines := strings.Split(strings.TrimSuffix(rep, "\r\n"), "\r\n")
		for j, l := range lines {
			if len(l)+2 > 512 {
				return fmt.Sprintf("reply line over 512 octets: %q", l)
			}
			if !replyFormat.MatchString(l) || len(l) < 4 {
				return fmt.Sprintf("malformed reply line %q", l)
			}
			if l[:3] != lines[0][:3] || (j < len(lines)-1) != (l[3] == '-') {
				return fmt.Sprintf("malformed multi-line reply %q", rep)
			}
		}
		code := lines[0][:3]
		ehlo := code == "250" && lines[0][4:] == "mx.test"
		if i > 0 && code[0] != '3' && !ehlo {
			if e := hEnhanced.FindString(lines[0][4:]); e == "" || e[0] != code[0] {
				return fmt.Sprintf("reply without a matching enhanced status code: %q", rep)
			}
		}
		if (code == "421" || code == "521" || code == "221") && i != len(reps)-1 {
			return fmt.Sprintf("reply after %q (G9)", lines[0])
		}
	}
	return ""
}

// hSplitReplies cuts the client's stream into whole replies.
func hSplitReplies(out string) []string {
	var reps []string
	cur := ""
	for _, l := range strings.SplitAfter(out, "\r\n") {
		if l == "" {
			continue
		}
		cur += l
		if len(l) < 4 || l[3] != '-' {
			reps = append(reps, cur)
			cur = ""
		}
	}
	if cur != "" {
		reps = append(reps, cur)
	}
	return reps
}

// hRunTable runs every case once, its client bytes in one segment.
func hRunTable(t *testing.T, cases []hcase) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			hRun(t, c, hConfig(t, c), nil).check(t, c, "one segment")
		})
	}
}
