package test

// STARTTLS when the connection is not one socket: willi with standard input
// and output as two pipes (driven from the test with crypto/tls over a
// net.Conn wrapper), and willi under ucspi-tcp's tcpserver. Also the
// client-side STARTTLS rules on the real binary: plaintext pipelined after
// STARTTLS is never executed, a TLS ClientHello without STARTTLS ends the
// session cleanly.

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"strings"
	"testing"
	"time"

	"willi/internal/smtptest"
)

func TestPeerStartTLSOverPipes(t *testing.T) {
	needRoot(t)
	bin := buildWilli(t)
	sinkAddr, dumpDir := startSMTPSink(t)
	dir := t.TempDir()
	cfg := writeConfig(t, dir, williTestConfig(sinkAddr, williTLSExtra(t, dir)))

	p := startWilliPipes(t, bin, cfg, "TCPREMOTEIP=192.0.2.7", "TCPREMOTEPORT=40000")
	c := smtptest.NewClient(t, p.Conn)
	if rep := c.Expect(220); !strings.HasPrefix(rep.Lines[0], "220 willi.test ESMTP") {
		t.Errorf("banner %q", rep.Lines)
	}
	ehlo := c.Cmd("EHLO pipes.client.example")
	if !strings.Contains(ehlo.String(), "STARTTLS") {
		t.Fatalf("EHLO does not offer STARTTLS with [tls] set: %q", ehlo.Lines)
	}
	st := c.StartTLS("willi.test")
	if st.Version < tls.VersionTLS12 {
		t.Errorf("TLS version %x below 1.2", st.Version)
	}
	ehlo = c.Cmd("EHLO pipes.client.example")
	if ehlo.Code != 250 || strings.Contains(ehlo.String(), "STARTTLS") {
		t.Errorf("EHLO inside TLS: %q", ehlo.Lines)
	}
	if rep := c.Cmd("MAIL FROM:<sender@sender.test>"); rep.Code != 250 {
		t.Fatalf("MAIL: %q", rep.Lines)
	}
	if rep := c.Cmd("RCPT TO:<alice@example.org>"); rep.Code != 250 {
		t.Fatalf("RCPT: %q", rep.Lines)
	}
	msg := []byte("Subject: over pipes\r\n\r\n.\r\nTLS over two pipes \xe9\r\n")
	if rep := c.Data(smtptest.DotStuff(msg)); rep.Code != 250 || rep.Last() != "2.0.0 Ok" {
		t.Errorf("final reply %q", rep.Lines)
	}
	if rep := c.Cmd("QUIT"); rep.Code != 221 {
		t.Errorf("QUIT: %q", rep.Lines)
	}
	if tc, ok := c.Conn.(*tls.Conn); ok {
		tc.CloseWrite()
	}
	if code, err := p.Wait(10 * time.Second); err != nil || code != 0 {
		t.Errorf("willi exit: status %d, %v; want 0", code, err)
	}
	m := readSinkMessages(t, dumpDir, 1, 10*time.Second)
	if !bytes.Equal(m[0].Data, sinkForm(msg)) {
		t.Errorf("delivered %q, want %q", m[0].Data, sinkForm(msg))
	}
}

func TestPeerTCPServer(t *testing.T) {
	needRoot(t)
	bin := buildWilli(t)
	sinkAddr, dumpDir := startSMTPSink(t)
	dir := t.TempDir()
	cfg := writeConfig(t, dir, williTestConfig(sinkAddr, williTLSExtra(t, dir)))
	w := startWilliTCPServer(t, bin, cfg)

	t.Run("swaks_tls", func(t *testing.T) {
		out, err := swaks(t, "--server", w.Addr, "--local-interface", "127.0.0.2", "--tls",
			"--helo", "client.example", "--from", "sender@sender.test", "--to", "alice@example.org",
			"--header", "Subject: tcpserver tls")
		if err != nil {
			t.Fatalf("swaks --tls under tcpserver: %v\n%s", err, out)
		}
		if got := swaksFinalReply(out); got != "250 2.0.0 Ok" {
			t.Errorf("final reply %q\n%s", got, out)
		}
		m := readSinkMessages(t, dumpDir, 1, 10*time.Second)
		if !bytes.Contains(m[0].Data, []byte("Subject: tcpserver tls\n")) {
			t.Errorf("sink got %q", m[0].Data)
		}
	})

	t.Run("smtplib_starttls", func(t *testing.T) {
		res := pySMTP(t, pyOpts{Server: w.Addr, Source: "127.0.0.2", Helo: "client.example", StartTLS: true,
			From: "sender@sender.test", To: []string{"bob@example.org"},
			Message: []byte("Subject: tcpserver smtplib\r\n\r\nbody\r\n")})
		if res.Error != "" || res.Data == nil || res.Data.Code != 250 {
			t.Fatalf("smtplib starttls under tcpserver: %s (%+v)", res.Error, res)
		}
	})

	t.Run("plaintext_pipelined_after_starttls_not_executed", func(t *testing.T) {
		c := dialSMTP(t, w.Addr, "127.0.0.2")
		c.Expect(220)
		c.Cmd("EHLO client.example")
		// CVE-2011-0411: the MAIL command rides in the same packet as
		// STARTTLS, in plaintext; it must not be executed inside TLS.
		if _, err := io.WriteString(c.Conn, "STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n"); err != nil {
			t.Fatal(err)
		}
		rep, err := c.ReadReply()
		if err != nil || rep.Code != 220 {
			// Closing instead is the stricter allowed answer.
			if err == nil {
				t.Fatalf("STARTTLS with pipelined plaintext: %q", rep.Lines)
			}
			return
		}
		tc := tls.Client(c.Conn, &tls.Config{InsecureSkipVerify: true, ServerName: "willi.test"})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := tc.HandshakeContext(ctx); err != nil {
			return // closing is allowed
		}
		c.Conn = tc
		c.Reader.Reset(tc)
		ehlo := c.Cmd("EHLO client.example")
		if ehlo.Code != 250 || !strings.HasPrefix(ehlo.Lines[0], "250-willi.test") && !strings.HasPrefix(ehlo.Lines[0], "250 willi.test") {
			t.Fatalf("first reply inside TLS %q is not the EHLO reply: the injected command was executed", ehlo.Lines)
		}
		if rep := c.Cmd("RCPT TO:<alice@example.org>"); rep.Code != 503 {
			t.Errorf("RCPT without MAIL inside TLS got %q, want 503: the injected MAIL was executed", rep.Lines)
		}
		c.Cmd("QUIT")
	})

	t.Run("clienthello_without_starttls", func(t *testing.T) {
		c := dialSMTP(t, w.Addr, "127.0.0.2")
		c.Expect(220)
		tc := tls.Client(c.Conn, &tls.Config{InsecureSkipVerify: true, ServerName: "willi.test"})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := tc.HandshakeContext(ctx); err == nil {
			t.Fatalf("TLS handshake without STARTTLS succeeded")
		}
		c.Conn.SetDeadline(time.Now().Add(5 * time.Second))
		rest, err := io.ReadAll(c.Reader)
		if err != nil {
			t.Errorf("willi did not close the connection within 5s of a ClientHello: %v (read %q)", err, rest)
		}
	})
}
