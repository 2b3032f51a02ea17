package test

// tls_verify against a trusted certificate: the built binary, which takes its
// trust anchors from SSL_CERT_FILE, and a scripted STARTTLS upstream.

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"willi/internal/smtptest"
)

// TestUpstreamTLSVerifyHostName: with tls_verify on and the upstream's
// certificate trusted, the mail goes over TLS when the certificate names
// the host of the server string, and nowhere (4xx) when it names another.
func TestUpstreamTLSVerifyHostName(t *testing.T) {
	bin := buildWilli(t)
	dir := t.TempDir()
	goodCert, goodKey := smtptest.GenCert(t, dir, "localhost")
	otherCert, otherKey := smtptest.GenCert(t, dir, "other.test")
	anchors := filepath.Join(dir, "anchors.pem")
	var pemData []byte
	for _, f := range []string{goodCert, otherCert} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		pemData = append(pemData, b...)
	}
	if err := os.WriteFile(anchors, pemData, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		cert, key string
		ok        bool
	}{
		{"right-name", goodCert, goodKey, true},
		{"wrong-name", otherCert, otherKey, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert, err := tls.LoadX509KeyPair(tc.cert, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			srvConf := &tls.Config{Certificates: []tls.Certificate{cert}}
			ln, err := net.Listen("tcp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			port := ln.Addr().(*net.TCPAddr).Port
			got := serveTLSUpstream(ln, srvConf)
			cfgPath := filepath.Join(dir, tc.name+".conf")
			conf := fmt.Sprintf("hostname = \"mx.test\"\n[[mapping]]\ntype = \"static\"\nserver = \"localhost:%d\"\n"+
				"[[upstream]]\nserver = \"localhost:%d\"\nstarttls = \"opportunistic\"\ntls_verify = true\nclient_address = \"none\"\n", port, port)
			if err := os.WriteFile(cfgPath, []byte(conf), 0o644); err != nil {
				t.Fatal(err)
			}
			p := startWilliPipes(t, bin, cfgPath, "SSL_CERT_FILE="+anchors, "SSL_CERT_DIR="+dir)
			c := smtptest.NewClient(t, p.Conn)
			c.Expect(220)
			if rep := c.Cmd("EHLO client.example.org"); rep.Code != 250 {
				t.Fatalf("EHLO: %q", rep.Lines)
			}
			if rep := c.Cmd("MAIL FROM:<a@example.org>"); rep.Code != 250 {
				t.Fatalf("MAIL: %q", rep.Lines)
			}
			rep := c.Cmd("RCPT TO:<b@example.net>")
			if tc.ok != (rep.Code == 250) || !tc.ok && rep.Code/100 != 4 {
				t.Fatalf("RCPT: %q", rep.Lines)
			}
			c.Cmd("QUIT")
			u := <-got
			if u == nil {
				t.Fatal("willi did not connect")
			}
			if tc.ok && u.handshakeErr != nil {
				t.Errorf("handshake: %v", u.handshakeErr)
			}
			if !tc.ok && u.handshakeErr == nil {
				t.Errorf("willi accepted a certificate for another name")
			}
			if plain := strings.Join(u.plain, " "); plain != "EHLO STARTTLS" {
				t.Errorf("upstream received %q in plaintext", plain)
			}
			if tc.ok && strings.Join(u.overTLS, " ") != "EHLO MAIL RCPT QUIT" {
				t.Errorf("upstream received %q over TLS", u.overTLS)
			}
		})
	}
}

// tlsUpstream is what a STARTTLS upstream received on one connection: the
// command verbs before and after the TLS handshake, and how that ended.
type tlsUpstream struct {
	plain, overTLS []string
	handshakeErr   error
}

// serveTLSUpstream accepts one connection on ln, offers STARTTLS with conf,
// answers every other command 250 (221 to QUIT) and sends what it received
// when the connection ends (nothing, closing the channel, if none came).
func serveTLSUpstream(ln net.Listener, conf *tls.Config) <-chan *tlsUpstream {
	got := make(chan *tlsUpstream, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(got)
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(60 * time.Second))
		u := &tlsUpstream{}
		defer func() { got <- u }()
		var conn net.Conn = c
		r := bufio.NewReader(conn)
		verbs := &u.plain
		io.WriteString(conn, "220 localhost ESMTP\r\n")
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			verb, _, _ := strings.Cut(strings.ToUpper(strings.TrimRight(line, "\r\n")), " ")
			*verbs = append(*verbs, verb)
			inTLS := verbs == &u.overTLS
			switch {
			case verb == "EHLO" && !inTLS:
				io.WriteString(conn, "250-up.test\r\n250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n")
			case verb == "EHLO":
				io.WriteString(conn, "250-up.test\r\n250 ENHANCEDSTATUSCODES\r\n")
			case verb == "STARTTLS" && !inTLS:
				io.WriteString(conn, "220 2.0.0 Ready\r\n")
				tc := tls.Server(c, conf)
				if u.handshakeErr = tc.Handshake(); u.handshakeErr != nil {
					return
				}
				conn, r, verbs = tc, bufio.NewReader(tc), &u.overTLS
			case verb == "QUIT":
				io.WriteString(conn, "221 2.0.0 Bye\r\n")
				return
			default:
				io.WriteString(conn, "250 2.0.0 Ok\r\n")
			}
		}
	}()
	return got
}
