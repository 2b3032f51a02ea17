package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"willi/internal/smtptest"
)

// The [[upstream]] TLS keys ca_file, server_name, cert_file/key_file and
// min_version, against scripted upstreams (tlsRig).

// tlsUpstreamOutcome is what a scripted upstream saw of willi's handshake.
type tlsUpstreamOutcome struct {
	mu        sync.Mutex
	sni       []string
	peerCerts []string // the client certificate's CN, "" for none
	versions  []uint16
	failures  []error
}

// handshakeScript answers STARTTLS with conf; the outcome records what
// willi sent. A failed handshake ends the connection.
func (o *tlsUpstreamOutcome) handshakeScript(conf *tls.Config) func(u *fakeUpstream) {
	return func(u *fakeUpstream) {
		c := conf.Clone()
		c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			o.mu.Lock()
			o.sni = append(o.sni, hello.ServerName)
			o.mu.Unlock()
			return nil, nil
		}
		u.send("220 up.test ESMTP")
		u.ehlo("PIPELINING", "STARTTLS")
		u.expect("STARTTLS")
		u.send("220 2.0.0 Ready to start TLS")
		if err := u.handshake(c); err != nil {
			o.mu.Lock()
			o.failures = append(o.failures, err)
			o.mu.Unlock()
			u.discard()
			return
		}
		st := u.conn.(*tls.Conn).ConnectionState()
		o.mu.Lock()
		cn := ""
		if len(st.PeerCertificates) > 0 {
			cn = st.PeerCertificates[0].Subject.CommonName
		}
		o.peerCerts = append(o.peerCerts, cn)
		o.versions = append(o.versions, st.Version)
		o.mu.Unlock()
		u.ehlo("PIPELINING")
	}
}

// relayOutcome runs one transaction and reports whether RCPT was accepted
// (the upstream handshake succeeded); a refusal must be a 4xx.
func relayOutcome(t *testing.T, r *tlsRig) bool {
	t.Helper()
	r.want("MAIL FROM:<a@example.org>", "250 ")
	rep := r.c.Cmd("RCPT TO:<b@example.net>")
	switch {
	case rep.Code == 250:
		if d := r.c.Data([]byte("Subject: t\r\n\r\nhello\r\n")); d.Code != 250 {
			t.Fatalf("end of data: %q", d.Lines)
		}
		r.end()
		return true
	case rep.Code/100 == 4:
		r.end()
		return false
	}
	t.Fatalf("RCPT: %q, want 250 or 4xx", rep.Lines)
	return false
}

// relayThroughTLS starts a rig whose upstream answers STARTTLS with srv,
// has the client send one message and fails the test unless the message was
// relayed exactly when ok. It returns the rig and what the upstream saw of
// willi's handshakes.
func relayThroughTLS(t *testing.T, opts rigOpts, srv *tls.Config, ok bool) (*tlsRig, *tlsUpstreamOutcome) {
	t.Helper()
	o := &tlsUpstreamOutcome{}
	r := newTLSRig(t, opts, o.handshakeScript(srv))
	r.hello(false)
	if got := relayOutcome(t, r); got != ok {
		t.Fatalf("relayed %v, want %v; upstream handshake errors %v", got, ok, o.failures)
	}
	return r, o
}

// wantPlaintextVerbs fails the test unless every upstream received exactly
// the verbs want (space-separated) before TLS, if any.
func wantPlaintextVerbs(t *testing.T, r *tlsRig, want string) {
	t.Helper()
	for _, u := range r.upstreams() {
		if plain := strings.Join(u.verbs(false), " "); plain != want {
			t.Errorf("upstream received %q in plaintext, want %q", plain, want)
		}
	}
}

// TestUpstreamTLSCAFile: ca_file replaces the system's trust anchors and
// turns verification on; an upstream whose certificate another CA signed
// gets nothing, in TLS or in plaintext, under opportunistic too.
func TestUpstreamTLSCAFile(t *testing.T) {
	ours := smtptest.NewCA(t, "Our Relay CA")
	theirs := smtptest.NewCA(t, "Another CA")
	for _, tc := range []struct {
		name   string
		policy string
		signer *smtptest.CA
		ok     bool
	}{
		{"signed-by-ca_file", fmt.Sprintf("ca_file = %q", ours.File), ours, true},
		{"signed-by-another-ca", fmt.Sprintf("ca_file = %q", ours.File), theirs, false},
		{"wrong-name", fmt.Sprintf("ca_file = %q", ours.File), nil, false},
		{"tls_verify-without-ca_file", "tls_verify = true", ours, false},
		{"ca_file-and-tls_verify", fmt.Sprintf("ca_file = %q\ntls_verify = true", ours.File), ours, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := ours.ServerConfig(t, "other.test")
			if tc.signer != nil {
				srv = tc.signer.ServerConfig(t, "up.test")
			}
			r, _ := relayThroughTLS(t, rigOpts{policy: "starttls = \"opportunistic\"\nclient_address = \"none\"\n" + tc.policy},
				srv, tc.ok)
			wantPlaintextVerbs(t, r, "EHLO STARTTLS")
			if !tc.ok && !strings.Contains(r.log.String(), "certificate") {
				t.Errorf("log does not say why the handshake failed")
			}
		})
	}
}

// TestUpstreamTLSServerName: server_name is the SNI and the name verified,
// also when the route is an address; without it the route's host name is
// sent and an address is verified against the certificate's IP SANs.
func TestUpstreamTLSServerName(t *testing.T) {
	ca := smtptest.NewCA(t, "Our Relay CA")
	for _, tc := range []struct {
		name     string
		server   string
		policy   string
		certFor  []string
		ok       bool
		wantSNI  string
		wantSent bool // any handshake reached the upstream
	}{
		{"ip-route-with-server_name", "192.0.2.25:25", `server_name = "relay.example.net"`, []string{"relay.example.net"}, true, "relay.example.net", true},
		{"ip-route-server_name-mismatch", "192.0.2.25:25", `server_name = "relay.example.net"`, []string{"other.example.net"}, false, "relay.example.net", true},
		{"ip-route-ip-san", "192.0.2.25:25", "", []string{"relay.example.net", "192.0.2.25"}, true, "", true},
		{"ip-route-no-ip-san", "192.0.2.25:25", "", []string{"relay.example.net"}, false, "", true},
		{"name-route-default-sni", "up.test:25", "", []string{"up.test"}, true, "up.test", true},
		{"name-route-server_name-wins", "up.test:25", `server_name = "relay.example.net"`, []string{"relay.example.net"}, true, "relay.example.net", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, o := relayThroughTLS(t, rigOpts{server: tc.server,
				policy: fmt.Sprintf("starttls = \"required\"\nclient_address = \"none\"\nca_file = %q\n%s", ca.File, tc.policy)},
				ca.ServerConfig(t, tc.certFor...), tc.ok)
			o.mu.Lock()
			defer o.mu.Unlock()
			if len(o.sni) == 0 {
				t.Fatal("no handshake reached the upstream")
			}
			for _, sni := range o.sni {
				if sni != tc.wantSNI {
					t.Errorf("SNI %q, want %q", sni, tc.wantSNI)
				}
			}
		})
	}
}

// TestUpstreamTLSClientCertificate: with cert_file and key_file willi
// presents a client certificate, which an upstream that authorises relays
// by certificate requires; without them that upstream's handshake fails and
// the recipient gets a 4xx.
func TestUpstreamTLSClientCertificate(t *testing.T) {
	ca := smtptest.NewCA(t, "Our Relay CA")
	clientCert, clientKey := ca.Issue(t, "willi.relay.test")
	for _, tc := range []struct {
		name   string
		policy string
		ok     bool
	}{
		{"with-certificate", fmt.Sprintf("cert_file = %q\nkey_file = %q", clientCert, clientKey), true},
		{"without-certificate", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := ca.ServerConfig(t, "up.test")
			srv.ClientAuth = tls.RequireAndVerifyClientCert
			srv.ClientCAs = ca.Pool
			_, o := relayThroughTLS(t, rigOpts{policy: "starttls = \"opportunistic\"\nclient_address = \"none\"\n" + tc.policy},
				srv, tc.ok)
			o.mu.Lock()
			defer o.mu.Unlock()
			if tc.ok && (len(o.peerCerts) != 1 || o.peerCerts[0] != "willi.relay.test") {
				t.Errorf("upstream saw client certificates %q, want willi.relay.test", o.peerCerts)
			}
		})
	}
}

// TestUpstreamTLSMinVersion: min_version = "1.3" refuses an upstream that
// speaks at most TLS 1.2 (4xx, nothing in plaintext); "1.2", the default,
// accepts it.
func TestUpstreamTLSMinVersion(t *testing.T) {
	ca := smtptest.NewCA(t, "Our Relay CA")
	for _, tc := range []struct {
		name      string
		policy    string
		serverMax uint16
		ok        bool
		want      uint16
	}{
		{"1.3-vs-tls12-server", `min_version = "1.3"`, tls.VersionTLS12, false, 0},
		{"1.3-vs-tls13-server", `min_version = "1.3"`, tls.VersionTLS13, true, tls.VersionTLS13},
		{"1.2-vs-tls12-server", `min_version = "1.2"`, tls.VersionTLS12, true, tls.VersionTLS12},
		{"default-vs-tls12-server", "", tls.VersionTLS12, true, tls.VersionTLS12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := ca.ServerConfig(t, "up.test")
			srv.MaxVersion = tc.serverMax
			r, o := relayThroughTLS(t, rigOpts{policy: "starttls = \"opportunistic\"\nclient_address = \"none\"\n" + tc.policy},
				srv, tc.ok)
			wantPlaintextVerbs(t, r, "EHLO STARTTLS")
			o.mu.Lock()
			defer o.mu.Unlock()
			if tc.ok && (len(o.versions) != 1 || o.versions[0] != tc.want) {
				t.Errorf("negotiated %x, want %x", o.versions, tc.want)
			}
		})
	}
}

// TestUpstreamTLSConfigUnusable: an upstream TLS file that cannot be read
// when a session needs it fails the recipient with a 4xx before STARTTLS is
// even sent: neither TLS without the operator's settings nor plaintext.
func TestUpstreamTLSConfigUnusable(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "gone.pem")
	r := newTLSRig(t, rigOpts{policy: fmt.Sprintf("starttls = \"opportunistic\"\nclient_address = \"none\"\nca_file = %q", missing)},
		func(u *fakeUpstream) {
			u.send("220 up.test ESMTP")
			u.ehlo("STARTTLS")
		})
	r.hello(false)
	if relayOutcome(t, r) {
		t.Fatal("relayed without the configured ca_file")
	}
	wantPlaintextVerbs(t, r, "EHLO")
	if !strings.Contains(r.log.String(), "upstream TLS configuration unusable") {
		t.Errorf("log does not name the configuration problem")
	}
}

// TestUpstreamTLSPlaintextRelayLogged: when the client's session is
// encrypted and its mail goes on in plaintext, an info line says so and
// why; when both are encrypted, or both plain, no such line.
func TestUpstreamTLSPlaintextRelayLogged(t *testing.T) {
	for _, tc := range []struct {
		name      string
		clientTLS bool
		policy    string
		exts      []string
		reason    string // "" when no line is expected
	}{
		{"never", true, `starttls = "never"`, []string{"STARTTLS"}, `reason="starttls = never"`},
		{"mirror-not-offered", true, `starttls = "mirror"`, nil, `reason="upstream does not offer STARTTLS"`},
		{"opportunistic-not-offered", true, `starttls = "opportunistic"`, nil, `reason="upstream does not offer STARTTLS"`},
		{"client-plain", false, `starttls = "never"`, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newTLSRig(t, rigOpts{clientTLS: tc.clientTLS, policy: tc.policy + "\nclient_address = \"none\""},
				func(u *fakeUpstream) {
					u.send("220 up.test ESMTP")
					u.ehlo(tc.exts...)
				})
			r.hello(tc.clientTLS)
			r.deliver()
			r.end()
			logged := r.log.String()
			has := strings.Contains(logged, "client used TLS, relayed in plaintext")
			switch {
			case tc.reason == "" && has:
				t.Errorf("plaintext relay logged for a plaintext client")
			case tc.reason != "" && (!has || !strings.Contains(logged, tc.reason)):
				t.Errorf("no info line with %s", tc.reason)
			}
		})
	}
}

// TestUpstreamTLSConfigValidation: every bad TLS key of every [[upstream]]
// is reported at once.
func TestUpstreamTLSConfigValidation(t *testing.T) {
	conf := `[[mapping]]
type = "static"
server = "10.0.0.1"
[[upstream]]
server = "10.0.0.1"
min_version = "1.1"
server_name = "192.0.2.1"
cert_file = "client.crt"
[[upstream]]
server = "10.0.0.2"
starttls = "never"
ca_file = "ca.pem"
key_file = "client.key"
min_version = "1.3"
[[upstream]]
server = "10.0.0.3"
server_name = "bad name"
`
	_, err := parseConfig(conf, "/etc/willi.conf")
	if err == nil {
		t.Fatal("config accepted")
	}
	for _, want := range []string{
		`#1: min_version "1.1": want "1.2" or "1.3"`,
		`#1: server_name "192.0.2.1" is not a host name`,
		"#1: cert_file and key_file must be set together",
		"#2: cert_file and key_file must be set together",
		"#2: ca_file with starttls = never",
		"#2: key_file with starttls = never",
		"#2: min_version with starttls = never",
		`#3: server_name "bad name" is not a host name`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("problems do not include %q:\n%v", want, err)
		}
	}
}

// TestCheckUpstreamTLSFiles: `willi check` reads the upstream TLS files and
// reports every problem: unreadable file, a file without a certificate, a
// key that does not belong to the certificate.
func TestCheckUpstreamTLSFiles(t *testing.T) {
	ca := smtptest.NewCA(t, "CA")
	dir := t.TempDir()
	cert1, _ := ca.Issue(t, "one")
	_, key2 := ca.Issue(t, "two")
	notPEM := filepath.Join(dir, "notpem.txt")
	os.WriteFile(notPEM, []byte("hello\n"), 0o644)
	good, goodKey := ca.Issue(t, "good")
	conf := fmt.Sprintf(`[[mapping]]
type = "static"
server = "10.0.0.1"
[[upstream]]
server = "10.0.0.1"
ca_file = "missing.pem"
cert_file = %q
key_file = %q
[[upstream]]
server = "10.0.0.2"
ca_file = %q
[[upstream]]
server = "10.0.0.3"
ca_file = %q
cert_file = %q
key_file = %q
`, cert1, key2, notPEM, ca.File, good, goodKey)
	path := filepath.Join(dir, "willi.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if status := runCheck([]string{"-config", path}, &out); status == 0 {
		t.Fatalf("check passed:\n%s", out.String())
	}
	got := out.String()
	for _, want := range []string{
		"[[upstream]] #1 (10.0.0.1:25): ca_file: open " + filepath.Join(dir, "missing.pem"),
		"[[upstream]] #1 (10.0.0.1:25): cert_file " + cert1,
		"private key does not match public key",
		"[[upstream]] #2 (10.0.0.2:25): ca_file " + notPEM + ": no PEM certificate in it",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("check output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "#3") {
		t.Errorf("check reports the good upstream:\n%s", got)
	}
}

// TestQuickAckUnderTLS: the socket under a client's TLS session is read
// with TCP_QUICKACK set (the kernel answers getsockopt with 1 while it is
// not delaying ACKs), so a sender's first command after the handshake is
// not held by its Nagle algorithm for willi's delayed ACK; pipes are left
// as they are.
func TestQuickAckUnderTLS(t *testing.T) {
	r := newTLSRig(t, rigOpts{clientTLS: true, policy: "client_address = \"none\""}, func(u *fakeUpstream) {
		u.send("220 up.test ESMTP")
		u.ehlo()
	})
	r.hello(true)
	r.s.wmu.Lock()
	tc, ok := r.s.conn.(*tls.Conn)
	r.s.wmu.Unlock()
	if !ok {
		t.Fatalf("session connection is %T after STARTTLS", r.s.conn)
	}
	if _, ok := tc.NetConn().(*quickAckConn); !ok {
		t.Fatalf("TLS runs over %T, not a quickAckConn", tc.NetConn())
	}
	r.end()

	// The wrapper itself: after a read the socket is in quick-ACK mode.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	rc, _ := sc.(*net.TCPConn).SyscallConn()
	quickAck := func() int {
		var v int
		rc.Control(func(fd uintptr) {
			v, _ = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK)
		})
		return v
	}
	// An interactive exchange (reply right after each request) puts the
	// socket into delayed-ACK mode: a plain read leaves it there.
	buf := make([]byte, 64)
	for i := 0; i < 4; i++ {
		c.Write([]byte("ping\r\n"))
		if _, err := sc.Read(buf); err != nil {
			t.Fatal(err)
		}
		sc.Write([]byte("pong\r\n"))
		c.Read(buf)
	}
	before := quickAck()
	c.Write([]byte("ping\r\n"))
	if _, err := withQuickAck(sc).Read(buf); err != nil {
		t.Fatal(err)
	}
	if after := quickAck(); after != 1 {
		t.Errorf("TCP_QUICKACK is %d after a read through quickAckConn (%d before)", after, before)
	}
	t.Logf("TCP_QUICKACK before %d, after a quickAckConn read 1", before)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	p, err := newStdioConn(int(pr.Fd()), int(pw.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, ok := withQuickAck(p).(*quickAckConn); ok {
		t.Errorf("a pipe got a quickAckConn")
	}
}

// ticketCache is a client session cache that counts the tickets stored.
type ticketCache struct {
	mu   sync.Mutex
	puts int
}

func (c *ticketCache) Get(string) (*tls.ClientSessionState, bool) { return nil, false }
func (c *ticketCache) Put(_ string, cs *tls.ClientSessionState) {
	if cs != nil {
		c.mu.Lock()
		c.puts++
		c.mu.Unlock()
	}
}

// TestNoSessionTicketsToClients: willi sends no TLS session ticket to a
// client that asks for them (one process per session, with its own random
// ticket key: a ticket could never resume anything).
func TestNoSessionTicketsToClients(t *testing.T) {
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			r := newTLSRig(t, rigOpts{clientTLS: true, policy: "client_address = \"none\""}, func(u *fakeUpstream) {
				u.send("220 up.test ESMTP")
				u.ehlo()
			})
			r.want("EHLO client.example.org", "250 ")
			r.want("STARTTLS", "220 ")
			cache := &ticketCache{}
			tc := tls.Client(r.c.Conn, &tls.Config{ServerName: "mx.test", InsecureSkipVerify: true,
				MinVersion: version, MaxVersion: version, ClientSessionCache: cache})
			if err := tc.Handshake(); err != nil {
				t.Fatalf("handshake: %v", err)
			}
			r.c.Conn, r.c.Reader = tc, bufio.NewReader(tc)
			// TLS 1.3 tickets come after the handshake: a reply reads them.
			r.want("EHLO client.example.org", "250 ")
			r.end()
			if cache.puts != 0 {
				t.Errorf("willi sent %d session tickets", cache.puts)
			}
		})
	}
}

// TestCheckReportsKeysAndFilesAtOnce: a config with a bad value and a
// missing upstream TLS file gets both reported by one `willi check`.
func TestCheckReportsKeysAndFilesAtOnce(t *testing.T) {
	dir := t.TempDir()
	conf := `[[mapping]]
type = "static"
server = "10.0.0.1"
[[upstream]]
server = "10.0.0.1"
min_version = "1.0"
ca_file = "missing-ca.pem"
`
	path := filepath.Join(dir, "willi.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if status := runCheck([]string{"-config", path}, &out); status != 1 {
		t.Fatalf("status %d, want 1:\n%s", status, out.String())
	}
	for _, want := range []string{`min_version "1.0"`, "ca_file: open " + filepath.Join(dir, "missing-ca.pem")} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("check output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestVerifyUpstreamPeer: what `willi probe` reports as verification uses
// the policy's ca_file and server_name.
func TestVerifyUpstreamPeer(t *testing.T) {
	ca := smtptest.NewCA(t, "Relay CA")
	certFile, _ := ca.Issue(t, "relay.example.net", "relay.example.net")
	pemData, _ := os.ReadFile(certFile)
	block, _ := pem.Decode(pemData)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	st := &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
	for _, tc := range []struct {
		name   string
		policy UpstreamConfig
		host   string
		ok     bool
	}{
		{"ca_file-and-server_name", UpstreamConfig{CAFile: ca.File, ServerName: "relay.example.net"}, "192.0.2.25", true},
		{"ca_file-route-name", UpstreamConfig{CAFile: ca.File}, "relay.example.net", true},
		{"ca_file-wrong-name", UpstreamConfig{CAFile: ca.File, ServerName: "other.example.net"}, "relay.example.net", false},
		{"system-roots", UpstreamConfig{}, "relay.example.net", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := verifyUpstreamPeer(tc.policy, tc.host, st)
			if (err == nil) != tc.ok {
				t.Errorf("verification error %v, want ok %v", err, tc.ok)
			}
		})
	}
}
