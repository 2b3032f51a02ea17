package main

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"willi/internal/smtptest"
)

// Class 2: STARTTLS injection, client side and upstream side, with real
// crypto/tls in-process; and class 1's end-of-data cases again inside TLS.

const (
	hReady    = "220 2.0.0 Ready to start TLS\r\n"
	hUpTLSBad = "451 4.7.5 Error: upstream TLS failed, try again later\r\n"
	hUpNoTLS  = "451 4.7.4 Error: upstream does not offer STARTTLS, try again later\r\n"
)

// hTLSEhlo is willi's EHLO reply before TLS when [tls] is set.
var hTLSEhlo = hEhloReply(52428800, true)

// hCert makes a certificate for willi and the fake upstreams; it returns
// the [tls] table naming it and a server config with it.
func hCert(t *testing.T) (table string, conf *tls.Config) {
	t.Helper()
	certFile, keyFile := smtptest.GenCert(t, t.TempDir(), "mx.test")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("[tls]\ncert_file = %q\nkey_file = %q\n", certFile, keyFile),
		&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}

// hRunTLS runs a case whose client starts TLS: it sends pre (ending in
// STARTTLS), reads up to willi's 220, then sends garbage in plaintext when
// it is not "", else handshakes and sends post, cut into segs.
func hRunTLS(t testing.TB, c hcase, cfg *Config, pre, garbage string, post []string) hResult {
	f := newFakeUpstreams(t, c.up, c.upTLS)
	srv, cli := net.Pipe()
	done, log := hSession(t, cfg, srv, f)
	o := newHOutput()
	go hWrite(cli, []string{pre}, o, 1)
	cli.SetDeadline(time.Now().Add(hWait))
	var out []byte
	one := make([]byte, 1)
	for !bytes.HasSuffix(out, []byte(hReady)) {
		n, err := cli.Read(one)
		o.add(one[:n], err != nil)
		out = append(out, one[:n]...)
		if err != nil {
			cli.Close()
			return hFinish(t, string(out), true, done, log, f)
		}
	}
	if garbage != "" {
		// What willi answers now is a TLS alert, not SMTP: only the close
		// counts.
		go cli.Write([]byte(garbage))
		_, closed := hReadAll(cli, newHOutput())
		cli.Close()
		return hFinish(t, string(out), closed, done, log, f)
	}
	tc := tls.Client(cli, &tls.Config{ServerName: "mx.test", InsecureSkipVerify: true, MinVersion: tls.VersionTLS12})
	if err := tc.Handshake(); err != nil {
		cli.Close()
		return hFinish(t, string(out)+"<handshake failed: "+err.Error()+">", true, done, log, f)
	}
	o = newHOutput()
	go hWrite(tc, post, o, 0)
	rest, closed := hReadAll(tc, o)
	cli.Close()
	return hFinish(t, string(out)+rest, closed, done, log, f)
}

// tlsCase is a class 2 case whose client uses STARTTLS: pre is sent
// first, post inside TLS (garbage instead, in plaintext, when set).
type tlsCase struct {
	hcase
	pre, post, garbage string
}

func TestHardeningTLS(t *testing.T) {
	table, srvTLS := hCert(t)
	upPolicy := func(p string) string {
		return table + "[[upstream]]\nserver = \"up1.test:25\"\nstarttls = \"" + p + "\"\n"
	}
	upWithTLS := upScript{"ext": "STARTTLS"}

	// Client side.
	client := []tlsCase{
		{hcase: hcase{name: "plaintext MAIL pipelined after STARTTLS is dropped",
			out: hBanner + hTLSEhlo + hReady + "503 5.5.1 Error: need MAIL command\r\n" + hBye},
			pre: hEhloIn + "STARTTLS\r\n" + hMailIn, post: hRcptIn + hQuit},
		{hcase: hcase{name: "plaintext EHLO MAIL RCPT pipelined after STARTTLS are dropped",
			out: hBanner + hTLSEhlo + hReady + "503 5.5.1 Error: send HELO/EHLO first\r\n" + hOK + "503 5.5.1 Error: need MAIL command\r\n" + hBye},
			pre: hEhloIn + "STARTTLS\r\nEHLO evil\r\n" + hMailIn + hRcptIn, post: hMailIn + "NOOP\r\n" + hRcptIn + hQuit},
		{hcase: hcase{name: "plaintext DATA and message pipelined after STARTTLS are dropped",
			out: hBanner + hTLSEhlo + hReady + "503 5.5.1 Error: send HELO/EHLO first\r\n" + hBye},
			pre: hEhloIn + "STARTTLS\r\n" + hMailIn + hRcptIn + "DATA\r\nevil\r\n.\r\n", post: hMailIn + hQuit},
		{hcase: hcase{name: "envelope before STARTTLS is forgotten",
			out: hBanner + hTLSEhlo + hOK + hReady + "503 5.5.1 Error: send HELO/EHLO first\r\n" + hBye},
			pre: hEhloIn + "RSET\r\nSTARTTLS\r\n", post: hMailIn + hQuit},
		{hcase: hcase{name: "a message inside TLS; no STARTTLS advertised any more; second STARTTLS refused",
			out: hBanner + hTLSEhlo + hReady + hEhlo + "554 5.5.1 Error: TLS already active\r\n" + hMailOK + hRcptOK + h354 + hQueued(1) + hBye,
			ups: []string{hUpData + "x\r\n.\r\n" + hQuit}},
			pre: hEhloIn + "STARTTLS\r\n", post: hEhloIn + "STARTTLS\r\n" + hMailIn + hRcptIn + "DATA\r\nx\r\n.\r\n" + hQuit},
		{hcase: hcase{name: "STARTTLS after a message drops that upstream; mirror starts TLS upstream", up: upWithTLS,
			out: hBanner + hTLSEhlo + hMailOK + hRcptOK + h354 + hQueued(1) + hReady + hEhlo + hMailOK + hRcptOK + h354 + hQueued(2) + hBye,
			ups: []string{hUpData + "x\r\n.\r\n" + hQuit, hUpEhlo + "STARTTLS\r\n<tls>" + hUpData + "y\r\n.\r\n" + hQuit}},
			pre: hDataIn + "x\r\n.\r\nSTARTTLS\r\n", post: hDataIn + "y\r\n.\r\n" + hQuit},
		{hcase: hcase{name: "plaintext instead of a ClientHello closes",
			out: hBanner + hTLSEhlo + hReady},
			pre: hEhloIn + "STARTTLS\r\n", garbage: hMailIn + hRcptIn},
		{hcase: hcase{name: "a TLS record of garbage closes",
			out: hBanner + hTLSEhlo + hReady},
			pre: hEhloIn + "STARTTLS\r\n", garbage: "\x16\x03\x01\x00\x05hello" + strings.Repeat("\x00", 64)},
	}
	for _, c := range client {
		c.tables, c.upTLS = table, srvTLS
		c.in = c.pre + c.garbage + c.post
		t.Run("client/"+c.name, func(t *testing.T) {
			t.Parallel()
			cfg := hConfig(t, c.hcase)
			hRunTLS(t, c.hcase, cfg, c.pre, c.garbage, []string{c.post}).check(t, c.hcase, "one segment")
			if c.garbage == "" {
				hRunTLS(t, c.hcase, cfg, c.pre, "", hOneByte(c.post)).check(t, c.hcase, "one byte per segment")
			}
		})
	}

	// Client side without TLS in the session.
	hRunTable(t, []hcase{
		{name: "client/STARTTLS with an argument", tables: table, in: hEhloIn + "STARTTLS now\r\n" + hQuit,
			out: hBanner + hTLSEhlo + "501 5.5.4 Syntax: STARTTLS\r\n" + hBye},
		{name: "client/STARTTLS inside a transaction", tables: table, in: hEhloIn + hMailIn + "STARTTLS\r\n" + hQuit,
			out: hBanner + hTLSEhlo + hMailOK + "503 5.5.1 Error: MAIL transaction in progress\r\n" + hBye},
		{name: "client/STARTTLS after RCPT", tables: table, in: hEnvIn + "STARTTLS\r\n" + hQuit,
			out: hBanner + hTLSEhlo + hMailOK + hRcptOK + "503 5.5.1 Error: MAIL transaction in progress\r\n" + hBye,
			ups: []string{hUpEnv + hQuit}},
		{name: "client/STARTTLS without [tls]", in: hEhloIn + "STARTTLS\r\n" + hQuit,
			out: hBanner + hEhlo + "502 5.5.1 Error: command not implemented\r\n" + hBye},
	})

	// Upstream side: response injection and policies.
	upstream := []hcase{
		{name: "response injected after the upstream's 220 to STARTTLS", tables: upPolicy("opportunistic"),
			up:  upScript{"ext": "STARTTLS", "STARTTLS": "220 2.0.0 go ahead\r\n250 2.1.0 injected\r\n"},
			out: hBanner + hTLSEhlo + hMailOK + hUpTLSBad + hBye, ups: []string{hUpEhlo + "STARTTLS\r\n<tls failed>"}},
		{name: "response injected in the same line as the 220", tables: upPolicy("required"),
			up:  upScript{"ext": "STARTTLS", "STARTTLS": "220 go\r\n\x16\x03\x01"},
			out: hBanner + hTLSEhlo + hMailOK + hUpTLSBad + hBye, ups: []string{hUpEhlo + "STARTTLS\r\n<tls failed>"}},
		{name: "required, not offered", tables: upPolicy("required"),
			out: hBanner + hTLSEhlo + hMailOK + hUpNoTLS + hBye, ups: []string{hUpEhlo}},
		{name: "required, refused", tables: upPolicy("required"), up: upScript{"ext": "STARTTLS", "STARTTLS": "454 4.7.0 no TLS today\r\n"},
			out: hBanner + hTLSEhlo + hMailOK + hUpTLSBad + hBye, ups: []string{hUpEhlo + "STARTTLS\r\n"}},
		{name: "required, multi-line 220 with other text", tables: upPolicy("required"), up: upScript{"ext": "STARTTLS", "STARTTLS": "220-go\r\n221 bye\r\n"},
			out: hBanner + hTLSEhlo + hMailOK + hUpTLSBad + hBye, ups: []string{hUpEhlo + "STARTTLS\r\n"}},
		{name: "required, certificate not verified", tables: upPolicy("required") + "tls_verify = true\n", up: upWithTLS,
			out: hBanner + hTLSEhlo + hMailOK + hUpTLSBad + hBye, ups: []string{hUpEhlo + "STARTTLS\r\n<tls failed>"}},
		{name: "opportunistic, refused: plaintext", tables: upPolicy("opportunistic"), up: upScript{"ext": "STARTTLS", "STARTTLS": "454 4.7.0 no TLS today\r\n"},
			out: hBanner + hTLSEhlo + hMailOK + hRcptOK + hBye, ups: []string{hUpEhlo + "STARTTLS\r\n" + hUpMail + hUpRcpt + hQuit}},
		{name: "opportunistic: TLS, EHLO again", tables: upPolicy("opportunistic"), up: upWithTLS,
			out: hBanner + hTLSEhlo + hMailOK + hRcptOK + hBye, ups: []string{hUpEhlo + "STARTTLS\r\n<tls>" + hUpEnv + hQuit}},
		{name: "never: no STARTTLS though offered", tables: upPolicy("never"), up: upWithTLS,
			out: hBanner + hTLSEhlo + hMailOK + hRcptOK + hBye, ups: []string{hUpEnv + hQuit}},
		{name: "mirror, client in plaintext: no STARTTLS", tables: table, up: upWithTLS,
			out: hBanner + hTLSEhlo + hMailOK + hRcptOK + hBye, ups: []string{hUpEnv + hQuit}},
		{name: "capabilities before TLS are forgotten (XCLIENT only before)", tables: upPolicy("required"),
			up:  upScript{"ext": "STARTTLS|XCLIENT NAME ADDR PROTO HELO PORT", "EHLO+tls": "250-up.test\r\n250 PIPELINING\r\n"},
			out: hBanner + hTLSEhlo + hMailOK + hRcptOK + hBye, ups: []string{hUpEhlo + "STARTTLS\r\n<tls>" + hUpEnv + hQuit}},
		{name: "capabilities after TLS count (XCLIENT only after)", tables: upPolicy("required"),
			up:  upScript{"ext": "STARTTLS", "EHLO+tls": "250-up.test\r\n250-XCLIENT NAME ADDR PROTO HELO PORT\r\n250 PIPELINING\r\n"},
			out: hBanner + hTLSEhlo + hMailOK + hRcptOK + hBye,
			ups: []string{hUpEhlo + "STARTTLS\r\n<tls>" + hUpEhlo +
				"XCLIENT HELO=client.example PROTO=ESMTP PORT=4321 NAME=client.example.org ADDR=192.0.2.1\r\nEHLO client.example\r\n" + hUpMail + hUpRcpt + hQuit}},
		{name: "STARTTLS upstream after EHLO refused: TLS needs EHLO", tables: upPolicy("required"),
			up:  upScript{"EHLO": "502 5.5.1 no EHLO\r\n"},
			out: hBanner + hTLSEhlo + hMailOK + hUpNoTLS + hBye, ups: []string{hUpEhlo + "HELO mx.test\r\n"}},
	}
	for i := range upstream {
		upstream[i].name = "upstream/" + upstream[i].name
		upstream[i].in = hEnvIn + hQuit
		upstream[i].upTLS = srvTLS
	}
	hRunTable(t, upstream)
}

// TestHardeningDataTLS runs class 1's cases after STARTTLS, the message
// in one TLS record and one byte per record.
func TestHardeningDataTLS(t *testing.T) {
	table, _ := hCert(t)
	pre := hEhloIn + "STARTTLS\r\n"
	for _, c := range hClass1Cases() {
		c.tables += "\n" + table
		post := c.in
		c.in = pre + post
		size := "52428800"
		if strings.Contains(c.conf, "max_message_size = 64") {
			size = "64"
		}
		c.out = strings.Replace(hBanner+hTLSEhlo, "52428800", size, 1) + hReady + strings.TrimPrefix(c.out, hBanner)
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			cfg := hConfig(t, c)
			hRunTLS(t, c, cfg, pre, "", []string{post}).check(t, c, "TLS, one record")
			hRunTLS(t, c, cfg, pre, "", hOneByte(post)).check(t, c, "TLS, one byte per record")
		})
	}
}
