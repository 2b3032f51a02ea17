package main

// STARTTLS towards both sides and XCLIENT against scripted fake upstreams:
// one in-process Session on a loopback TCP pair, its upstream dials sent to
// a loopback listener whose connections each run a script. Every line an
// upstream receives is recorded with whether it came inside TLS, so each
// test checks what was sent in plaintext, not only what the client was told.

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"willi/internal/smtptest"
)

// upLine is one line an upstream received, CRLF removed.
type upLine struct {
	text string
	tls  bool
}

// fakeUpstream is one connection willi opened, driven by a script that runs
// in its own goroutine. A script step that fails reports with t.Errorf and
// ends the script (scriptAbort); the connection is then closed.
type fakeUpstream struct {
	t     *testing.T
	conn  net.Conn
	r     *bufio.Reader
	inTLS bool

	mu   sync.Mutex
	got  []upLine
	tail []byte // raw bytes read by discard
	done chan struct{}
}

type scriptAbort struct{}

func (u *fakeUpstream) fail(format string, a ...any) {
	u.t.Errorf("upstream: "+format, a...)
	panic(scriptAbort{})
}

// send writes the lines, CRLF-terminated, in one write.
func (u *fakeUpstream) send(lines ...string) {
	u.raw(strings.Join(lines, "\r\n") + "\r\n")
}

func (u *fakeUpstream) raw(s string) {
	if _, err := io.WriteString(u.conn, s); err != nil {
		u.fail("writing %q: %v", s, err)
	}
}

// read returns the next line; ok is false when willi closed the connection.
func (u *fakeUpstream) read() (line string, ok bool) {
	l, err := u.r.ReadString('\n')
	if err != nil {
		if l != "" {
			u.fail("partial line %q before %v", l, err)
		}
		return "", false
	}
	if !strings.HasSuffix(l, "\r\n") {
		u.fail("line without CRLF: %q", l)
	}
	l = strings.TrimSuffix(l, "\r\n")
	u.mu.Lock()
	u.got = append(u.got, upLine{l, u.inTLS})
	u.mu.Unlock()
	return l, true
}

// expect reads a line that must begin with prefix.
func (u *fakeUpstream) expect(prefix string) string {
	l, ok := u.read()
	if !ok {
		u.fail("connection closed, want %q", prefix)
	}
	if !strings.HasPrefix(l, prefix) {
		u.fail("got %q, want %q...", l, prefix)
	}
	return l
}

// ehlo answers willi's EHLO with the given extensions.
func (u *fakeUpstream) ehlo(exts ...string) {
	u.expect("EHLO ")
	lines := []string{"250-up.test"}
	for _, e := range exts {
		lines = append(lines, "250-"+e)
	}
	lines = append(lines, "250 ENHANCEDSTATUSCODES")
	u.send(lines...)
}

// handshake runs the server side of TLS after the 220 to STARTTLS.
func (u *fakeUpstream) handshake(conf *tls.Config) error {
	tc := tls.Server(u.conn, conf)
	if err := tc.Handshake(); err != nil {
		return err
	}
	u.conn, u.r, u.inTLS = tc, bufio.NewReader(tc), true
	return nil
}

// starttls answers STARTTLS and completes the handshake.
func (u *fakeUpstream) starttls(conf *tls.Config) {
	u.expect("STARTTLS")
	u.send("220 2.0.0 Ready to start TLS")
	if err := u.handshake(conf); err != nil {
		u.fail("TLS handshake: %v", err)
	}
}

// serve answers whatever comes next as a willing server until willi quits
// or closes: MAIL, RCPT, RSET, NOOP 250; DATA 354 and 250 after the end of
// data; QUIT 221.
func (u *fakeUpstream) serve() {
	for {
		l, ok := u.read()
		if !ok {
			return
		}
		verb, _, _ := strings.Cut(strings.ToUpper(l), " ")
		switch verb {
		case "MAIL", "RCPT", "RSET", "NOOP":
			u.send("250 2.0.0 Ok")
		case "DATA":
			u.send("354 End data with <CR><LF>.<CR><LF>")
			for {
				d, ok := u.read()
				if !ok {
					return
				}
				if d == "." {
					break
				}
			}
			u.send("250 2.0.0 Ok: queued as FAKE1")
		case "QUIT":
			u.send("221 2.0.0 Bye")
			return
		default:
			u.send("502 5.5.2 Error: command not recognized")
		}
	}
}

// discard reads whatever else comes, as raw bytes, until willi closes.
func (u *fakeUpstream) discard() {
	b, _ := io.ReadAll(u.r)
	u.mu.Lock()
	u.tail = append(u.tail, b...)
	u.mu.Unlock()
}

// lines returns what the upstream received so far.
func (u *fakeUpstream) lines() []upLine {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]upLine(nil), u.got...)
}

// texts returns the lines received inside TLS (tls true) or not.
func (u *fakeUpstream) texts(inTLS bool) []string {
	var out []string
	for _, l := range u.lines() {
		if l.tls == inTLS {
			out = append(out, l.text)
		}
	}
	return out
}

// verbs returns the command verbs received inside TLS or not, message data
// excluded.
func (u *fakeUpstream) verbs(inTLS bool) []string {
	var out []string
	inData := false
	for _, l := range u.lines() {
		if inData {
			inData = l.text != "."
			continue
		}
		verb, _, _ := strings.Cut(l.text, " ")
		if l.tls == inTLS {
			out = append(out, verb)
		}
		inData = verb == "DATA"
	}
	return out
}

// tlsRig is one Session, its client and the upstream listener.
type tlsRig struct {
	t   *testing.T
	dir string
	log *syncBuffer
	s   *Session
	c   *smtptest.Client

	done   chan struct{}
	ln     net.Listener
	mu     sync.Mutex
	ups    []*fakeUpstream
	script func(u *fakeUpstream)
}

// rigOpts configures a tlsRig.
type rigOpts struct {
	clientTLS bool   // [tls]: STARTTLS for the client, with a generated certificate
	policy    string // lines of the [[upstream]] table for up.test:25
	clientIP  net.IP // default 192.0.2.1
	name      string // what the client's name lookup yields; default "client.example.org"
	server    string // the route's server, dialled to the rig's upstream; default "up.test:25"
}

// newTLSRig starts a session; each connection willi makes to up.test:25
// runs script (then serve, until willi quits or closes).
func newTLSRig(t *testing.T, o rigOpts, script func(u *fakeUpstream)) *tlsRig {
	t.Helper()
	r := &tlsRig{t: t, dir: t.TempDir(), log: &syncBuffer{}, done: make(chan struct{}), script: script}
	conf := "hostname = \"mx.test\"\ncommand_timeout = \"30s\"\nupstream_command_timeout = \"30s\"\nupstream_data_timeout = \"30s\"\n"
	if o.clientTLS {
		cert, key := smtptest.GenCert(t, r.dir, "mx.test")
		conf += fmt.Sprintf("[tls]\ncert_file = %q\nkey_file = %q\n", cert, key)
	}
	server := o.server
	if server == "" {
		server = "up.test:25"
	}
	conf += fmt.Sprintf("[[mapping]]\ntype = \"static\"\nserver = %q\n", server)
	conf += fmt.Sprintf("[[upstream]]\nserver = %q\n", server) + o.policy + "\n"
	path := filepath.Join(r.dir, "willi.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatalf("config: %v\n%s", err, conf)
	}

	r.ln, err = net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var upWG sync.WaitGroup
	upWG.Add(1)
	go func() {
		defer upWG.Done()
		for {
			c, err := r.ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(60 * time.Second))
			u := &fakeUpstream{t: t, conn: c, r: bufio.NewReader(c), done: make(chan struct{})}
			r.mu.Lock()
			r.ups = append(r.ups, u)
			r.mu.Unlock()
			upWG.Add(1)
			go func() {
				defer upWG.Done()
				defer close(u.done)
				defer func() { u.conn.Close() }()
				defer func() {
					if p := recover(); p != nil {
						if _, ok := p.(scriptAbort); !ok {
							panic(p)
						}
					}
				}()
				r.script(u)
				u.serve()
			}()
		}
	}()

	cl, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := cl.Accept()
		accepted <- c
	}()
	cc, err := net.Dial("tcp4", cl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc := <-accepted
	cl.Close()
	if sc == nil {
		t.Fatal("accept failed")
	}

	log := slog.New(slog.NewTextHandler(r.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := newSession(cfg, sc, log)
	s.clientIP, s.clientPort = net.ParseIP("192.0.2.1").To4(), 4321
	if o.clientIP != nil {
		s.clientIP = o.clientIP
	}
	s.localAddr = &net.TCPAddr{IP: net.ParseIP("192.0.2.10").To4(), Port: 25}
	upAddr := r.ln.Addr().String()
	s.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr != server {
			return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("connection refused")}
		}
		return (&net.Dialer{}).DialContext(ctx, "tcp4", upAddr)
	}
	name := o.name
	if name == "" {
		name = "client.example.org"
	}
	s.lookupName = func(context.Context, net.IP) string { return name }
	r.s = s
	go func() {
		defer close(r.done)
		s.serve()
	}()
	r.c = smtptest.NewClient(t, cc)

	t.Cleanup(func() {
		cc.Close()
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Errorf("session did not end after the client closed")
		}
		r.ln.Close()
		ended := make(chan struct{})
		go func() { upWG.Wait(); close(ended) }()
		select {
		case <-ended:
		case <-time.After(10 * time.Second):
			t.Errorf("an upstream connection outlived the session")
		}
		if t.Failed() {
			t.Logf("willi's log:\n%s", r.log.String())
		}
	})
	r.c.Expect(220)
	return r
}

// end has the client QUIT and waits until the session and every upstream
// connection are over, so that what the upstreams received is final.
func (r *tlsRig) end() {
	r.t.Helper()
	r.c.Cmd("QUIT")
	r.wait()
}

// wait waits for the session and the upstream connections to end.
func (r *tlsRig) wait() {
	r.t.Helper()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		r.t.Fatalf("session did not end")
	}
	for _, u := range r.upstreams() {
		select {
		case <-u.done:
		case <-time.After(10 * time.Second):
			r.t.Fatalf("upstream connection still open after the session ended")
		}
	}
}

func (r *tlsRig) upstreams() []*fakeUpstream {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*fakeUpstream(nil), r.ups...)
}

// only returns the one upstream connection willi made.
func (r *tlsRig) only() *fakeUpstream {
	r.t.Helper()
	ups := r.upstreams()
	if len(ups) != 1 {
		r.t.Fatalf("willi made %d upstream connections, want 1", len(ups))
	}
	return ups[0]
}

// want sends a command and checks the reply's first line begins with prefix.
func (r *tlsRig) want(cmd, prefix string) smtptest.Reply {
	r.t.Helper()
	rep := r.c.Cmd(cmd)
	if len(rep.Lines) == 0 || !strings.HasPrefix(rep.Lines[len(rep.Lines)-1], prefix) {
		r.t.Fatalf("%s: got %q, want %q...", cmd, rep.Lines, prefix)
	}
	return rep
}

// hello greets with EHLO, after STARTTLS when tls is set.
func (r *tlsRig) hello(tls bool) {
	r.t.Helper()
	r.want("EHLO client.example.org", "250 ")
	if tls {
		st := r.c.StartTLS("mx.test")
		if st.Version < tlsMinVersion {
			r.t.Fatalf("client TLS version %x", st.Version)
		}
		r.want("EHLO client.example.org", "250 ")
	}
}

const tlsMinVersion = tls.VersionTLS12

// deliver runs one transaction to the end and checks the upstream's 250.
func (r *tlsRig) deliver() {
	r.t.Helper()
	r.want("MAIL FROM:<a@example.org>", "250 ")
	r.want("RCPT TO:<b@example.net>", "250 ")
	if rep := r.c.Data([]byte("Subject: t\r\n\r\nhello\r\n")); rep.Code != 250 {
		r.t.Fatalf("end of data: %q", rep.Lines)
	}
}

// upstreamCert is a self-signed certificate for the fake upstreams.
func upstreamCert(t *testing.T, dir, cn string) *tls.Config {
	t.Helper()
	certFile, keyFile := smtptest.GenCert(t, dir, cn)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}

// ---------------------------------------------------------------------------
// Upstream STARTTLS policies

// TestUpstreamTLSPolicies runs every policy with the client in plaintext and
// in TLS, against an upstream that offers STARTTLS and one that does not.
func TestUpstreamTLSPolicies(t *testing.T) {
	type want int
	const (
		plain   want = iota // delivered, no STARTTLS sent
		secured             // delivered inside TLS, nothing in plaintext after STARTTLS
		refused             // RCPT 451 4.7.4, nothing in plaintext beyond EHLO
	)
	cases := []struct {
		policy    string
		clientTLS bool
		offered   bool
		want      want
	}{
		{"mirror", false, false, plain},
		{"mirror", true, false, plain},
		{"mirror", false, true, plain},
		{"mirror", true, true, secured},
		{"opportunistic", false, false, plain},
		{"opportunistic", true, false, plain},
		{"opportunistic", false, true, secured},
		{"opportunistic", true, true, secured},
		{"required", false, false, refused},
		{"required", true, false, refused},
		{"required", false, true, secured},
		{"required", true, true, secured},
		{"never", false, false, plain},
		{"never", true, false, plain},
		{"never", false, true, plain},
		{"never", true, true, plain},
	}
	for _, tc := range cases {
		name := fmt.Sprintf("%s/client-tls=%v/offered=%v", tc.policy, tc.clientTLS, tc.offered)
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srvConf := upstreamCert(t, t.TempDir(), "up.test")
			r := newTLSRig(t, rigOpts{clientTLS: true, policy: fmt.Sprintf("starttls = %q\nclient_address = \"none\"", tc.policy)},
				func(u *fakeUpstream) {
					u.send("220 up.test ESMTP")
					exts := []string{"PIPELINING", "SIZE 100000000", "8BITMIME"}
					if tc.offered {
						exts = append(exts, "STARTTLS")
					}
					u.ehlo(exts...)
					if tc.want == secured {
						u.starttls(srvConf)
						u.ehlo("PIPELINING", "SIZE 100000000", "8BITMIME")
					}
				})
			r.hello(tc.clientTLS)
			switch tc.want {
			case refused:
				r.want("MAIL FROM:<a@example.org>", "250 ")
				r.want("RCPT TO:<b@example.net>", "451 4.7.4 ")
			default:
				r.deliver()
			}
			r.end()
			u := r.only()
			plainVerbs := strings.Join(u.verbs(false), " ")
			tlsVerbs := strings.Join(u.verbs(true), " ")
			switch tc.want {
			case plain:
				if plainVerbs != "EHLO MAIL RCPT DATA QUIT" || tlsVerbs != "" {
					t.Errorf("upstream got plaintext %q, TLS %q", plainVerbs, tlsVerbs)
				}
				if !strings.Contains(r.log.String(), "upstream_tls=none") {
					t.Errorf("transaction log does not say upstream_tls=none")
				}
			case secured:
				if plainVerbs != "EHLO STARTTLS" || tlsVerbs != "EHLO MAIL RCPT DATA QUIT" {
					t.Errorf("upstream got plaintext %q, TLS %q", plainVerbs, tlsVerbs)
				}
				if !strings.Contains(r.log.String(), `upstream_tls="TLS`) {
					t.Errorf("transaction log does not name the upstream TLS version")
				}
			case refused:
				if plainVerbs != "EHLO" || tlsVerbs != "" {
					t.Errorf("upstream got plaintext %q, TLS %q", plainVerbs, tlsVerbs)
				}
				if !strings.Contains(r.log.String(), "upstream does not offer STARTTLS") {
					t.Errorf("log does not say why the recipient was refused")
				}
			}
		})
	}
}

// TestUpstreamTLSRefusedSTARTTLS: an upstream that offers STARTTLS and then
// answers it with 454 gets the mail in plaintext under opportunistic (as
// the contract's policy says) and nothing under required.
func TestUpstreamTLSRefusedSTARTTLS(t *testing.T) {
	for _, policy := range []string{"opportunistic", "required"} {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			r := newTLSRig(t, rigOpts{policy: fmt.Sprintf("starttls = %q\nclient_address = \"none\"", policy)},
				func(u *fakeUpstream) {
					u.send("220 up.test ESMTP")
					u.ehlo("STARTTLS")
					u.expect("STARTTLS")
					u.send("454 4.7.0 TLS not available due to local problem")
				})
			r.hello(false)
			if policy == "required" {
				r.want("MAIL FROM:<a@example.org>", "250 ")
				r.want("RCPT TO:<b@example.net>", "451 4.7.5 ")
				r.end()
				if got := strings.Join(r.only().verbs(false), " "); got != "EHLO STARTTLS" {
					t.Errorf("upstream received %q", got)
				}
				return
			}
			r.deliver()
			r.end()
			if got := strings.Join(r.only().verbs(false), " "); got != "EHLO STARTTLS MAIL RCPT DATA QUIT" {
				t.Errorf("upstream received %q", got)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Upstream handshake failures and response injection

// TestUpstreamTLSHandshakeFailure: every way the upstream handshake can fail
// gives the recipient a 4xx, and the upstream never receives the
// transaction, in plaintext or otherwise, whatever the policy.
func TestUpstreamTLSHandshakeFailure(t *testing.T) {
	cases := []struct {
		name   string
		policy string
		server func(t *testing.T, u *fakeUpstream)
	}{
		{"self-signed-cert-verify-on/required", "starttls = \"required\"\ntls_verify = true", handshakeWith("up.test")},
		{"self-signed-cert-verify-on/opportunistic", "starttls = \"opportunistic\"\ntls_verify = true", handshakeWith("up.test")},
		{"wrong-name-verify-on/opportunistic", "starttls = \"opportunistic\"\ntls_verify = true", handshakeWith("other.test")},
		{"server-closes-in-handshake/required", "starttls = \"required\"", func(t *testing.T, u *fakeUpstream) {
			// Read the ClientHello's record header, then hang up.
			hdr := make([]byte, 5)
			if _, err := io.ReadFull(u.r, hdr); err != nil {
				u.fail("reading the ClientHello: %v", err)
			}
			if hdr[0] != 0x16 {
				u.fail("willi did not start a handshake: % x", hdr)
			}
			u.conn.Close()
			u.discard()
		}},
		{"server-closes-in-handshake/opportunistic", "starttls = \"opportunistic\"", func(t *testing.T, u *fakeUpstream) {
			u.conn.Close()
			u.discard()
		}},
		{"server-answers-plaintext/mirror", "starttls = \"mirror\"", func(t *testing.T, u *fakeUpstream) {
			u.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			hdr := make([]byte, 5)
			io.ReadFull(u.r, hdr)
			u.raw("250 2.0.0 Ok, no TLS here\r\n")
			u.discard()
		}},
		{"tls11-only-server/required", "starttls = \"required\"", func(t *testing.T, u *fakeUpstream) {
			conf := upstreamCert(t, t.TempDir(), "up.test")
			conf.MinVersion, conf.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
			if err := u.handshake(conf); err == nil {
				u.fail("willi completed a TLS 1.1 handshake")
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newTLSRig(t, rigOpts{clientTLS: true, policy: tc.policy + "\nclient_address = \"none\""},
				func(u *fakeUpstream) {
					u.send("220 up.test ESMTP")
					u.ehlo("PIPELINING", "STARTTLS")
					u.expect("STARTTLS")
					u.send("220 2.0.0 Ready to start TLS")
					tc.server(t, u)
				})
			r.hello(true)
			r.want("MAIL FROM:<a@example.org>", "250 ")
			r.want("RCPT TO:<b@example.net>", "451 4.7.")
			// The session goes on; a second try fails the same way and
			// still sends nothing in plaintext.
			r.want("RCPT TO:<c@example.net>", "451 4.7.")
			r.end()
			for _, u := range r.upstreams() {
				if got := strings.Join(u.verbs(false), " "); got != "EHLO STARTTLS" {
					t.Errorf("upstream received %q in plaintext", got)
				}
				if got := u.texts(true); len(got) > 0 {
					t.Errorf("upstream received %q over TLS", got)
				}
				u.mu.Lock()
				tail := string(u.tail)
				u.mu.Unlock()
				for _, verb := range []string{"MAIL", "RCPT", "DATA", "EHLO", "XCLIENT"} {
					if strings.Contains(tail, verb) {
						t.Errorf("upstream received %s in the handshake's place: %q", verb, tail)
					}
				}
			}
			if n := len(r.upstreams()); n != 2 {
				t.Errorf("%d upstream connections, want 2 (one per RCPT)", n)
			}
			if !strings.Contains(r.log.String(), "upstream TLS handshake failed") {
				t.Errorf("log does not say the handshake failed")
			}
		})
	}
}

// handshakeWith presents a self-signed certificate for cn.
func handshakeWith(cn string) func(t *testing.T, u *fakeUpstream) {
	return func(t *testing.T, u *fakeUpstream) {
		if err := u.handshake(upstreamCert(t, t.TempDir(), cn)); err == nil {
			u.fail("willi accepted an unverifiable certificate with tls_verify on")
		}
	}
}

// TestUpstreamTLSInjection: bytes the upstream sends after its 220 to
// STARTTLS and before the handshake (response injection, CVE-2011-0411's
// mirror image) abort that upstream connection; the client gets a 4xx and
// the upstream nothing more, not even a ClientHello.
func TestUpstreamTLSInjection(t *testing.T) {
	for _, inject := range []string{
		"250-injected\r\n250 ok\r\n",
		"250 2.1.0 Ok\r\n",
		"x",
	} {
		t.Run(fmt.Sprintf("%q", inject), func(t *testing.T) {
			t.Parallel()
			var sawHello sync.Once
			helloBytes := make(chan []byte, 1)
			r := newTLSRig(t, rigOpts{policy: "starttls = \"opportunistic\"\nclient_address = \"none\""},
				func(u *fakeUpstream) {
					u.send("220 up.test ESMTP")
					u.ehlo("PIPELINING", "STARTTLS")
					u.expect("STARTTLS")
					// One write: the 220 and the injected bytes arrive together.
					u.raw("220 2.0.0 Ready to start TLS\r\n" + inject)
					rest, _ := io.ReadAll(u.r)
					sawHello.Do(func() { helloBytes <- rest })
				})
			r.hello(false)
			r.want("MAIL FROM:<a@example.org>", "250 ")
			r.want("RCPT TO:<b@example.net>", "451 4.")
			r.end()
			if rest := <-helloBytes; len(rest) > 0 {
				t.Errorf("upstream received %q after the injection", rest)
			}
			u := r.only()
			if got := strings.Join(u.verbs(false), " "); got != "EHLO STARTTLS" {
				t.Errorf("upstream received %q", got)
			}
			if !strings.Contains(r.log.String(), "unsolicited bytes") {
				t.Errorf("log does not name the injection")
			}
		})
	}
}

// ---------------------------------------------------------------------------
// After TLS: only the post-TLS capabilities count

func TestUpstreamTLSPostTLSCapabilities(t *testing.T) {
	cases := []struct {
		name      string
		pre, post []string
		check     func(t *testing.T, tlsLines []string)
	}{
		{"xclient-only-after-tls", []string{"STARTTLS", "SIZE 1000"}, []string{"SIZE 1000", "XCLIENT NAME ADDR"},
			func(t *testing.T, l []string) {
				if l[1] != "XCLIENT NAME=client.example.org ADDR=192.0.2.1" {
					t.Errorf("after TLS: %q", l)
				}
			}},
		{"xclient-removed-after-tls", []string{"STARTTLS", "XCLIENT NAME ADDR HELO PROTO"}, []string{"SIZE 1000"},
			func(t *testing.T, l []string) {
				for _, x := range l {
					if strings.HasPrefix(x, "XCLIENT") {
						t.Errorf("XCLIENT sent though not offered after TLS: %q", l)
					}
				}
			}},
		{"size-only-after-tls", []string{"STARTTLS"}, []string{"SIZE 1000"},
			func(t *testing.T, l []string) {
				if l[1] != "MAIL FROM:<a@example.org> SIZE=100" {
					t.Errorf("after TLS: %q", l)
				}
			}},
		{"size-removed-after-tls", []string{"STARTTLS", "SIZE 1000"}, nil,
			func(t *testing.T, l []string) {
				if l[1] != "MAIL FROM:<a@example.org>" {
					t.Errorf("after TLS: %q", l)
				}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srvConf := upstreamCert(t, t.TempDir(), "up.test")
			r := newTLSRig(t, rigOpts{clientTLS: true, policy: "starttls = \"mirror\""},
				func(u *fakeUpstream) {
					u.send("220 up.test ESMTP")
					u.ehlo(tc.pre...)
					u.starttls(srvConf)
					u.ehlo(tc.post...)
					if l, _ := u.read(); strings.HasPrefix(l, "XCLIENT") {
						u.send("220 up.test ESMTP")
						u.ehlo(tc.post...)
						return
					}
					u.send("250 2.1.0 Ok")
				})
			r.hello(true)
			r.want("MAIL FROM:<a@example.org> SIZE=100", "250 ")
			r.want("RCPT TO:<b@example.net>", "250 ")
			r.end()
			u := r.only()
			if got := strings.Join(u.verbs(false), " "); got != "EHLO STARTTLS" {
				t.Errorf("plaintext: %q", got)
			}
			l := u.texts(true)
			if len(l) < 2 || !strings.HasPrefix(l[0], "EHLO ") {
				t.Fatalf("no EHLO again after TLS: %q", l)
			}
			tc.check(t, l)
		})
	}
}

// ---------------------------------------------------------------------------
// XCLIENT

// TestUpstreamTLSXCLIENTRefused: an upstream that advertises XCLIENT and
// then refuses it gets no MAIL; the recipient gets 451 4.7.0 and the log
// says why.
func TestUpstreamTLSXCLIENTRefused(t *testing.T) {
	for _, refusal := range []string{
		"550 5.7.0 Error: insufficient authorization",
		"501 5.5.4 Bad XCLIENT attribute name: HELO",
		"421 4.3.0 up.test Error: try again",
	} {
		t.Run(refusal[:3], func(t *testing.T) {
			t.Parallel()
			srvConf := upstreamCert(t, t.TempDir(), "up.test")
			r := newTLSRig(t, rigOpts{clientTLS: true},
				func(u *fakeUpstream) {
					u.send("220 up.test ESMTP")
					u.ehlo("STARTTLS", "XCLIENT NAME ADDR")
					u.starttls(srvConf)
					u.ehlo("XCLIENT NAME ADDR PROTO HELO")
					u.expect("XCLIENT ")
					u.send(refusal)
				})
			r.hello(true)
			r.want("MAIL FROM:<a@example.org>", "250 ")
			r.want("RCPT TO:<b@example.net>", "451 4.7.0 ")
			r.end()
			u := r.only()
			if got := strings.Join(u.verbs(true), " "); got != "EHLO XCLIENT" {
				t.Errorf("upstream received %q after TLS", got)
			}
			log := r.log.String()
			if !strings.Contains(log, "upstream refused XCLIENT") || !strings.Contains(log, refusal[4:9]) {
				t.Errorf("log does not give the refusal and its reason")
			}
		})
	}
}

// TestUpstreamTLSXCLIENTAttributes: XCLIENT carries only the attributes the
// upstream lists, NAME and ADDR last, xtext-encoded; PROTO follows the
// client's greeting; after the 220 re-greeting willi greets again with the
// client's own HELO name and verb.
func TestUpstreamTLSXCLIENTAttributes(t *testing.T) {
	const hostile = "evil ADDR=127.0.0.1 +x=y"
	cases := []struct {
		name     string
		offered  string
		greeting string // the client's greeting
		clientIP net.IP
		lookup   string
		want     string // the XCLIENT command
		regreet  string // what willi greets with after XCLIENT
	}{
		{"name-addr", "NAME ADDR", "EHLO client.example.org", nil, "",
			"XCLIENT NAME=client.example.org ADDR=192.0.2.1", "EHLO client.example.org"},
		{"helo-proto-only", "HELO PROTO", "EHLO client.example.org", nil, "",
			"XCLIENT HELO=client.example.org PROTO=ESMTP", "EHLO client.example.org"},
		{"all-known-and-unknown", "LOGIN NAME ADDR PORT PROTO HELO DESTADDR DESTPORT", "EHLO client.example.org", nil, "",
			"XCLIENT HELO=client.example.org PROTO=ESMTP PORT=4321 NAME=client.example.org ADDR=192.0.2.1", "EHLO client.example.org"},
		{"lower-case-offer", "name addr", "EHLO client.example.org", nil, "",
			"XCLIENT NAME=client.example.org ADDR=192.0.2.1", "EHLO client.example.org"},
		{"helo-client-proto-smtp", "HELO PROTO ADDR", "HELO old.example.org", nil, "",
			"XCLIENT HELO=old.example.org PROTO=SMTP ADDR=192.0.2.1", "HELO old.example.org"},
		{"hostile-helo-xtext", "HELO NAME ADDR", "EHLO " + hostile, nil, "",
			"XCLIENT HELO=evil+20ADDR+3D127.0.0.1+20+2Bx+3Dy NAME=client.example.org ADDR=192.0.2.1", "EHLO " + hostile},
		{"ipv6", "NAME ADDR", "EHLO client.example.org", net.ParseIP("2001:db8::25"), "",
			"XCLIENT NAME=client.example.org ADDR=IPV6:2001:db8::25", "EHLO client.example.org"},
		{"ipv4-mapped", "ADDR", "EHLO client.example.org", net.ParseIP("::ffff:198.51.100.7"), "",
			"XCLIENT ADDR=198.51.100.7", "EHLO client.example.org"},
		{"name-unavailable", "NAME ADDR", "EHLO client.example.org", nil, nameUnavailable,
			"XCLIENT NAME=[UNAVAILABLE] ADDR=192.0.2.1", "EHLO client.example.org"},
		{"name-tempunavail", "NAME ADDR", "EHLO client.example.org", nil, nameTempUnavail,
			"XCLIENT NAME=[TEMPUNAVAIL] ADDR=192.0.2.1", "EHLO client.example.org"},
		{"name-confirmed", "NAME", "EHLO client.example.org", nil, "mail.sender.example",
			"XCLIENT NAME=mail.sender.example", "EHLO client.example.org"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newTLSRig(t, rigOpts{clientIP: tc.clientIP, name: tc.lookup},
				func(u *fakeUpstream) {
					u.send("220 up.test ESMTP")
					u.ehlo("XCLIENT " + tc.offered)
					u.expect("XCLIENT ")
					u.send("220 up.test ESMTP")
					if strings.HasPrefix(tc.regreet, "HELO") {
						u.expect("HELO ")
						u.send("250 up.test")
						return
					}
					u.ehlo()
				})
			r.want(tc.greeting, "250")
			r.deliver()
			r.end()
			got := r.only().texts(false)
			want := []string{"EHLO mx.test", tc.want, tc.regreet}
			if len(got) < 3 || strings.Join(got[:3], "\n") != strings.Join(want, "\n") {
				t.Fatalf("upstream received\n%q\nwant first\n%q", got, want)
			}
			if rest := strings.Join(r.only().verbs(false)[3:], " "); rest != "MAIL RCPT DATA QUIT" {
				t.Errorf("after the greeting, upstream received %q", rest)
			}
			if !strings.Contains(r.log.String(), "xclient=accepted") {
				t.Errorf("transaction log does not say XCLIENT was accepted")
			}
		})
	}
}

// TestUpstreamTLSXCLIENTSplit: values that do not fit one 512-octet command
// are spread over several XCLIENT commands, each answered with 220, NAME and
// ADDR together in the last one; every attribute is sent exactly once.
func TestUpstreamTLSXCLIENTSplit(t *testing.T) {
	longName := strings.Repeat("a", 60) + "." + strings.Repeat("b", 60) + "." + strings.Repeat("c", 60) + "." + strings.Repeat("d", 60) + ".example"
	cases := []struct {
		name string
		helo string
		ip   net.IP
	}{
		// An encoded HELO of 200 octets leaves NAME fitting the first
		// command but not ADDR after it.
		{"long-helo-long-name-ipv6", strings.Repeat("h", 200), net.ParseIP("2001:db8:ffff:ffff:ffff:ffff:ffff:fffe")},
		// Every octet of the HELO grows threefold in xtext: 85 spaces
		// and "=" encode to 255 octets, the most a value may have.
		{"encoded-helo-255", strings.Repeat("=", 85), net.ParseIP("2001:db8::1")},
		{"helo-too-long-for-a-value", strings.Repeat("x", 300), net.ParseIP("192.0.2.1")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newTLSRig(t, rigOpts{clientIP: tc.ip, name: longName},
				func(u *fakeUpstream) {
					u.send("220 up.test ESMTP")
					u.ehlo("XCLIENT NAME ADDR PORT PROTO HELO LOGIN")
					for {
						l, ok := u.read()
						if !ok {
							return
						}
						if !strings.HasPrefix(l, "XCLIENT ") {
							if !strings.HasPrefix(l, "EHLO ") {
								u.fail("got %q before the greeting", l)
							}
							u.send("250-up.test", "250 PIPELINING")
							return
						}
						u.send("220 up.test ESMTP")
					}
				})
			r.want("EHLO "+tc.helo, "250 ")
			r.want("MAIL FROM:<a@example.org>", "250 ")
			r.want("RCPT TO:<b@example.net>", "250 ")
			r.end()
			var cmds []string
			seen := map[string]int{}
			for _, l := range r.only().texts(false) {
				if !strings.HasPrefix(l, "XCLIENT ") {
					continue
				}
				cmds = append(cmds, l)
				if len(l)+2 > 512 {
					t.Errorf("XCLIENT command of %d octets: %.60q...", len(l)+2, l)
				}
				for _, a := range strings.Fields(l)[1:] {
					k, v, _ := strings.Cut(a, "=")
					seen[k]++
					if len(v) > maxXCLIENTValue {
						t.Errorf("%s value of %d octets", k, len(v))
					}
					if _, err := xtextDecode(v); err != nil {
						t.Errorf("%s=%q: %v", k, v, err)
					}
				}
			}
			if len(cmds) == 0 {
				t.Fatal("no XCLIENT sent")
			}
			for _, k := range []string{"HELO", "PROTO", "PORT", "NAME", "ADDR"} {
				if seen[k] != 1 {
					t.Errorf("%s sent %d times in %q", k, seen[k], cmds)
				}
			}
			last := strings.Fields(cmds[len(cmds)-1])
			if n := len(last); n < 3 || !strings.HasPrefix(last[n-2], "NAME=") || !strings.HasPrefix(last[n-1], "ADDR=") {
				t.Errorf("NAME and ADDR not last together in %q", cmds)
			}
			for i := 0; i < len(cmds)-1; i++ {
				if strings.Contains(cmds[i], " NAME=") || strings.Contains(cmds[i], " ADDR=") {
					t.Errorf("NAME or ADDR before the last command: %q", cmds)
				}
			}
			if helo := seen["HELO"]; helo == 1 {
				for _, c := range cmds {
					for _, a := range strings.Fields(c)[1:] {
						if v, ok := strings.CutPrefix(a, "HELO="); ok {
							dec, _ := xtextDecode(v)
							if len(xtextEncode(tc.helo)) <= maxXCLIENTValue && dec != tc.helo {
								t.Errorf("HELO=%q decodes to %q, want %q", v, dec, tc.helo)
							}
							if len(xtextEncode(tc.helo)) > maxXCLIENTValue && dec != nameUnavailable {
								t.Errorf("over-long HELO sent as %q", dec)
							}
						}
					}
				}
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Client side STARTTLS

// TestUpstreamTLSClientTLS11Refused: a client that offers at most TLS 1.1
// fails the handshake; the session ends cleanly without an upstream.
func TestUpstreamTLSClientTLS11Refused(t *testing.T) {
	r := newTLSRig(t, rigOpts{clientTLS: true}, func(u *fakeUpstream) { u.fail("willi dialled the upstream") })
	r.want("EHLO client.example.org", "250 ")
	r.want("STARTTLS", "220 ")
	tc := tls.Client(r.c.Conn, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11})
	if err := tc.Handshake(); err == nil {
		t.Fatalf("TLS %x handshake succeeded", tc.ConnectionState().Version)
	}
	r.wait()
	log := r.log.String()
	if !strings.Contains(log, "client TLS handshake failed") || !strings.Contains(log, "end=tls-failed") {
		t.Errorf("log does not record the failed handshake")
	}
	if strings.Contains(log, "panic") {
		t.Errorf("panic in the log")
	}
}

// TestUpstreamTLSClientHandshakeFailure: garbage, or a hang-up, instead of
// a ClientHello ends the session cleanly.
func TestUpstreamTLSClientHandshakeFailure(t *testing.T) {
	for _, tc := range []struct {
		name string
		send string
	}{
		{"plaintext-instead-of-hello", "EHLO again\r\n"},
		{"hang-up", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newTLSRig(t, rigOpts{clientTLS: true}, func(u *fakeUpstream) { u.fail("willi dialled the upstream") })
			r.want("EHLO client.example.org", "250 ")
			r.want("STARTTLS", "220 ")
			if tc.send == "" {
				r.c.Conn.Close()
			} else {
				io.WriteString(r.c.Conn, tc.send)
				// Whatever willi answers, it is no SMTP reply.
				b, _ := io.ReadAll(r.c.Reader)
				if strings.Contains(string(b), "250") {
					t.Errorf("willi answered %q in plaintext after STARTTLS", b)
				}
			}
			r.wait()
			if log := r.log.String(); !strings.Contains(log, "end=tls-failed") {
				t.Errorf("session log does not say the TLS handshake failed")
			}
		})
	}
}

// TestUpstreamTLSClientSessionReset: after the client's handshake the
// session starts over (RFC 3207 §4.2): EHLO is required again, nothing from
// before TLS is kept (the pre-TLS HELO name never reaches the upstream),
// STARTTLS is no longer offered or accepted; in the middle of a
// transaction or with an argument, STARTTLS is refused.
func TestUpstreamTLSClientSessionReset(t *testing.T) {
	r := newTLSRig(t, rigOpts{clientTLS: true}, func(u *fakeUpstream) {
		u.send("220 up.test ESMTP")
		u.ehlo("XCLIENT HELO PROTO")
		u.expect("XCLIENT ")
		u.send("220 up.test ESMTP")
		u.ehlo()
	})
	rep := r.want("EHLO before.example", "250 ")
	if !strings.Contains(rep.String(), "STARTTLS") {
		t.Fatalf("STARTTLS not advertised before TLS: %q", rep.Lines)
	}
	r.want("STARTTLS now", "501 5.5.4 ")
	r.want("MAIL FROM:<early@example.org>", "250 ")
	r.want("STARTTLS", "503 5.5.1 ")
	r.want("RSET", "250 ")
	r.c.StartTLS("mx.test")
	r.want("MAIL FROM:<a@example.org>", "503 5.5.1 ")
	rep = r.want("EHLO after.example", "250 ")
	if strings.Contains(rep.String(), "STARTTLS") {
		t.Errorf("STARTTLS advertised inside TLS: %q", rep.Lines)
	}
	r.want("STARTTLS", "554 5.5.1 ")
	r.want("RCPT TO:<b@example.net>", "503 5.5.1 ")
	r.want("MAIL FROM:<a@example.org>", "250 ")
	r.want("RCPT TO:<b@example.net>", "250 ")
	r.end()
	got := r.only().texts(false)
	if len(got) < 2 || got[1] != "XCLIENT HELO=after.example PROTO=ESMTP" {
		t.Errorf("upstream received %q", got)
	}
	for _, l := range got {
		if strings.Contains(l, "before.example") || strings.Contains(l, "early@") {
			t.Errorf("pre-TLS state reached the upstream: %q", l)
		}
	}
	if !strings.Contains(r.log.String(), `tls="TLS`) {
		t.Errorf("log does not record the client's TLS")
	}
}

// TestUpstreamTLSClientSTARTTLSDropsUpstream: an upstream connection kept
// from a plaintext transaction is not reused once the client is in TLS: it
// gets QUIT, and the next transaction opens a new one that, under mirror,
// uses STARTTLS and carries the post-TLS HELO.
func TestUpstreamTLSClientSTARTTLSDropsUpstream(t *testing.T) {
	srvConf := upstreamCert(t, t.TempDir(), "up.test")
	var n int
	var mu sync.Mutex
	r := newTLSRig(t, rigOpts{clientTLS: true}, func(u *fakeUpstream) {
		mu.Lock()
		n++
		first := n == 1
		mu.Unlock()
		u.send("220 up.test ESMTP")
		u.ehlo("STARTTLS", "XCLIENT HELO")
		if !first {
			u.starttls(srvConf)
			u.ehlo("XCLIENT HELO")
		}
		u.expect("XCLIENT ")
		u.send("220 up.test ESMTP")
		u.ehlo()
	})
	r.want("EHLO plain.example", "250 ")
	r.deliver()
	r.c.StartTLS("mx.test")
	r.want("EHLO secure.example", "250 ")
	r.deliver()
	r.end()
	ups := r.upstreams()
	if len(ups) != 2 {
		t.Fatalf("%d upstream connections, want 2", len(ups))
	}
	if got := strings.Join(ups[0].verbs(false), " "); got != "EHLO XCLIENT EHLO MAIL RCPT DATA QUIT" {
		t.Errorf("first upstream received %q", got)
	}
	if got := strings.Join(ups[1].verbs(false), " "); got != "EHLO STARTTLS" {
		t.Errorf("second upstream received %q in plaintext", got)
	}
	tl := ups[1].texts(true)
	if len(tl) < 2 || tl[1] != "XCLIENT HELO=secure.example" {
		t.Errorf("second upstream received %q over TLS", tl)
	}
}

// TestUpstreamTLSClientPipelinedAfterSTARTTLS: commands pipelined in
// plaintext behind STARTTLS are dropped, never executed (CVE-2011-0411).
func TestUpstreamTLSClientPipelinedAfterSTARTTLS(t *testing.T) {
	r := newTLSRig(t, rigOpts{clientTLS: true}, func(u *fakeUpstream) { u.fail("willi dialled the upstream") })
	r.want("EHLO client.example.org", "250 ")
	r.c.Send("STARTTLS\r\nEHLO injected.example\r\nMAIL FROM:<x@example.org>")
	r.c.Expect(220)
	if r.c.Reader.Buffered() != 0 {
		t.Fatalf("willi answered a command pipelined after STARTTLS")
	}
	tc := tls.Client(r.c.Conn, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	r.c.Conn, r.c.Reader = tc, bufio.NewReader(tc)
	r.want("MAIL FROM:<a@example.org>", "503 5.5.1 ")
	r.end()
}

// TestUpstreamTLSXCLIENTNameFCrDNS: NAME is the forward-confirmed reverse
// name, [UNAVAILABLE] when there is none and [TEMPUNAVAIL] when DNS failed
// temporarily, as Postfix defines them; asked of a fake DNS server.
func TestUpstreamTLSXCLIENTNameFCrDNS(t *testing.T) {
	zone := map[string][]string{ // "name TYPE" -> answers; "SERVFAIL" fails
		"1.2.0.192.in-addr.arpa. PTR": {"Mail.Example.ORG."},
		"mail.example.org. A":         {"192.0.2.1"},
		"2.2.0.192.in-addr.arpa. PTR": {"forged.example.org."},
		"forged.example.org. A":       {"198.51.100.1"},
		"4.2.0.192.in-addr.arpa. PTR": {"SERVFAIL"},
		"5.2.0.192.in-addr.arpa. PTR": {"flaky.example.org."},
		"flaky.example.org. A":        {"SERVFAIL"},
		"flaky.example.org. AAAA":     {"SERVFAIL"},
		"6.2.0.192.in-addr.arpa. PTR": {"other.example.org.", "second.example.org."},
		"other.example.org. A":        {"198.51.100.2"},
		"second.example.org. A":       {"192.0.2.6"},
		"5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. PTR": {"v6.example.org."},
		"v6.example.org. AAAA": {"2001:db8::25"},
	}
	addr := fakeDNS(t, zone)
	res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "udp4", addr)
	}}
	for _, tc := range []struct {
		ip   string
		want string
	}{
		{"192.0.2.1", "mail.example.org"},
		{"192.0.2.2", nameUnavailable}, // the name does not point back
		{"192.0.2.3", nameUnavailable}, // no PTR (NXDOMAIN)
		{"192.0.2.4", nameTempUnavail}, // PTR lookup SERVFAIL
		{"192.0.2.5", nameTempUnavail}, // forward lookup SERVFAIL
		{"192.0.2.6", "second.example.org"},
		{"2001:db8::25", "v6.example.org"},
		{"", nameUnavailable},
	} {
		t.Run(tc.ip, func(t *testing.T) {
			t.Parallel()
			var ip net.IP
			if tc.ip != "" {
				ip = net.ParseIP(tc.ip)
			}
			if got := clientName(context.Background(), res, ip); got != tc.want {
				t.Errorf("clientName(%s) = %q, want %q", tc.ip, got, tc.want)
			}
		})
	}
}

// TestSameIP: forward answers are compared as addresses, whatever their
// spelling or IPv6 zone.
func TestSameIP(t *testing.T) {
	for _, tc := range []struct {
		a, ip string
		want  bool
	}{
		{"192.0.2.1", "192.0.2.1", true},
		{"192.0.2.1", "192.0.2.2", false},
		{"::ffff:192.0.2.1", "192.0.2.1", true},
		{"2001:DB8::25", "2001:db8::25", true},
		{"fe80::1%lo", "fe80::1", true},
		{"fe80::1%lo", "fe80::2", false},
		{"not-an-address", "192.0.2.1", false},
		{"", "192.0.2.1", false},
	} {
		if got := sameIP(tc.a, net.ParseIP(tc.ip)); got != tc.want {
			t.Errorf("sameIP(%q, %s) = %v, want %v", tc.a, tc.ip, got, tc.want)
		}
	}
}

// fakeDNS answers UDP queries on loopback from zone; other names are
// NXDOMAIN. It stops with the test.
func fakeDNS(t *testing.T, zone map[string][]string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			typ := strings.TrimPrefix(q.Type.String(), "Type")
			answers, found := zone[strings.ToLower(q.Name.String())+" "+typ]
			rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
			switch {
			case len(answers) == 1 && answers[0] == "SERVFAIL":
				rh.RCode = dnsmessage.RCodeServerFailure
				answers = nil
			case !found && !nameKnown(zone, q.Name.String()):
				rh.RCode = dnsmessage.RCodeNameError
			}
			b := dnsmessage.NewBuilder(nil, rh)
			b.EnableCompression()
			b.StartQuestions()
			b.Question(q)
			b.StartAnswers()
			rrh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}
			for _, a := range answers {
				switch q.Type {
				case dnsmessage.TypePTR:
					b.PTRResource(rrh, dnsmessage.PTRResource{PTR: dnsmessage.MustNewName(a)})
				case dnsmessage.TypeA:
					var r dnsmessage.AResource
					copy(r.A[:], net.ParseIP(a).To4())
					b.AResource(rrh, r)
				case dnsmessage.TypeAAAA:
					var r dnsmessage.AAAAResource
					copy(r.AAAA[:], net.ParseIP(a).To16())
					b.AAAAResource(rrh, r)
				}
			}
			out, err := b.Finish()
			if err != nil {
				continue
			}
			pc.WriteTo(out, from)
		}
	}()
	return pc.LocalAddr().String()
}

// nameKnown reports a name with some record in zone (NODATA, not NXDOMAIN).
func nameKnown(zone map[string][]string, name string) bool {
	for k := range zone {
		if strings.HasPrefix(k, strings.ToLower(name)+" ") {
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------------------
// The per-connection cost of client STARTTLS

// BenchmarkTLSHandshakeRSA2048 and BenchmarkTLSHandshakeECDSAP256 measure
// what one willi process pays for a client's STARTTLS: reading and parsing
// the certificate and key files (serverTLSConfig, as cmdStartTLS does in
// every process) and one full server handshake with a Go client over an
// in-memory pipe. load-ns/op is the part spent loading the files.
func BenchmarkTLSHandshakeRSA2048(b *testing.B) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	benchHandshake(b, key)
}

func BenchmarkTLSHandshakeECDSAP256(b *testing.B) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	benchHandshake(b, key)
}

func benchHandshake(b *testing.B, key crypto.Signer) {
	dir := b.TempDir()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "mx.test"},
		DNSNames:     []string{"mx.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		b.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		b.Fatal(err)
	}
	files := &TLSConfig{CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem")}
	if err := os.WriteFile(files.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(files.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		b.Fatal(err)
	}
	var load time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		conf, err := serverTLSConfig(files)
		load += time.Since(t0)
		if err != nil {
			b.Fatal(err)
		}
		sc, cc := net.Pipe()
		errc := make(chan error, 1)
		go func() {
			// A fresh client each time: no session resumption.
			tc := tls.Client(cc, &tls.Config{ServerName: "mx.test", InsecureSkipVerify: true})
			errc <- tc.Handshake()
		}()
		if err := tls.Server(sc, conf).Handshake(); err != nil {
			b.Fatal(err)
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		sc.Close()
		cc.Close()
	}
	b.ReportMetric(float64(load.Nanoseconds())/float64(b.N), "load-ns/op")
}
