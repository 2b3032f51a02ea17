package main

import (
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// Class 5: protocol abuse. Commands out of sequence, over-long lines, NUL
// and control octets, binary garbage and TLS on the plaintext port, HTTP,
// early talkers, BDAT, pipelining floods, too many recipients and errors,
// a client that never reads, slowloris.

func TestHardeningAbuse(t *testing.T) {
	noop := "NOOP\r\n"
	clientHello := "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + strings.Repeat("\x00", 32)
	var rcpts, rcptUp, rcptOut strings.Builder
	for i := range 103 {
		fmt.Fprintf(&rcpts, "RCPT TO:<r%d@example.org>\r\n", i)
		if i < 100 {
			fmt.Fprintf(&rcptUp, "RCPT TO:<r%d@example.org>\r\n", i)
			rcptOut.WriteString(hRcptOK)
		} else {
			rcptOut.WriteString(hTooManyRc)
		}
	}
	cases := []hcase{
		{name: "commands out of sequence",
			in: hMailIn + noop + "RCPT TO:<b@example.org>\r\n" + noop + hEhloIn +
				"RCPT TO:<b@example.org>\r\n" + noop + hMailIn + noop + hMailIn + noop +
				"RCPT TO:<victim@[192.0.2.1]>\r\n" + hQuit,
			out: hBanner + hNoHelo + hOK + hNeedMail + hOK + hEhlo +
				hNeedMail + hOK + hMailOK + hOK + hNested + hOK +
				fmt.Sprintf(hNoRelay, "victim@[192.0.2.1]") + hBye},
		// DATA out of sequence (the client waits for the refusal, then
		// quits; pipelining after DATA is in TestImproperPipelining).
		{name: "DATA before EHLO", in: "DATA\r\n" + hQuit, out: hBanner + hNeedMail + hBye},
		{name: "DATA before MAIL", in: hEhloIn + "DATA\r\n" + hQuit, out: hBanner + hEhlo + hNeedMail + hBye},
		{name: "DATA without RCPT", in: hEhloIn + hMailIn + "DATA\r\n" + hQuit, out: hBanner + hEhlo + hMailOK + hNeedRcpt + hBye},
		{name: "DATA after a refused RCPT", in: hEhloIn + hMailIn + "RCPT TO:<victim@[192.0.2.1]>\r\nDATA\r\n" + hQuit,
			out: hBanner + hEhlo + hMailOK + fmt.Sprintf(hNoRelay, "victim@[192.0.2.1]") + hNoValid + hBye},
		{name: "lines of 512, 513 and 40000 octets",
			in: hEhloIn + "NOOP " + strings.Repeat("x", 505) + "\r\n" + "NOOP " + strings.Repeat("x", 506) + "\r\n" + noop +
				"MAIL FROM:<" + strings.Repeat("a", 40000) + "@example.net>\r\n" + noop + hQuit,
			out: hBanner + hEhlo + hOK + hLongLine + hOK + hLongLine + hOK + hBye},
		{name: "over-long line inside a transaction is not executed",
			in:  hEnvIn + "RCPT TO:<" + strings.Repeat("c", 600) + "@example.org>\r\n" + hQuit,
			out: hEnvOut + hLongLine + hBye, ups: []string{hUpEnv + hQuit}},
		{name: "NUL, CR, ESC, DEL and bare LF in commands",
			in: hEhloIn + "NOOP\x00\r\n" + noop + "NO\rOP\r\n" + noop + "NOOP \x1b[31m\r\n" + noop + "NOOP\x7f\r\n" + noop +
				"NOOP\n" + noop + "MAIL FROM:<a@example.net>\x00RCPT TO:<b@example.org>\r\n" + noop + hQuit,
			out: hBanner + hEhlo + hBadChars + hOK + hBadChars + hOK + hBadChars + hOK + hBadChars + hOK +
				hBareLFCmd + hOK + hBadChars + hOK + hBye},
		{name: "binary garbage closes at once", in: "\x80\x81\x82\x83\r\nEHLO x\r\n", out: hBanner},
		{name: "NUL first closes at once", in: "\x00EHLO x\r\n", out: hBanner},
		{name: "TLS ClientHello on the plaintext port", in: clientHello, out: hBanner},
		{name: "SSLv2 hello on the plaintext port", in: "\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10", out: hBanner},
		{name: "TLS ClientHello inside a transaction", in: hEnvIn + clientHello,
			out: hEnvOut, ups: []string{hUpEnv + hQuit}},
		{name: "HTTP GET", in: "GET / HTTP/1.1\r\nHost: mx.test\r\n\r\n", out: hBanner + hHTTP},
		{name: "HTTP POST after EHLO", in: hEhloIn + "POST /submit HTTP/1.0\r\nContent-Length: 0\r\n\r\n", out: hBanner + hEhlo + hHTTP},
		{name: "HTTP CONNECT", in: "CONNECT mx.test:25 HTTP/1.1\r\n\r\n", out: hBanner + hHTTP},
		{name: "header-shaped lines end the session as HTTP does", in: "Host: mx.test\r\nUser-Agent: x\r\nAccept: */*\r\n" + hQuit,
			out: hBanner + hHTTP},
		{name: "a header line after EHLO", in: hEhloIn + "Subject: hello\r\n" + hQuit, out: hBanner + hEhlo + hHTTP},
		{name: "BDAT without CHUNKING", in: hEhloIn + "BDAT 10 LAST\r\n0123456789" + hQuit, out: hBanner + hEhlo + hBDAT},
		{name: "BDAT inside a transaction: the upstream gets no BDAT", in: hEnvIn + "BDAT 5 LAST\r\nhello" + hQuit,
			out: hEnvOut + hBDAT, ups: []string{hUpEnv + hQuit}},
		{name: "pipelining flood", in: hEhloIn + strings.Repeat(noop, 5000) + hQuit,
			out: hBanner + hEhlo + strings.Repeat(hOK, 5000) + hBye},
		{name: "too many recipients", in: hEhloIn + hMailIn + rcpts.String() + "DATA\r\nx\r\n.\r\n" + hQuit,
			out: hBanner + hEhlo + hMailOK + rcptOut.String() + h354 + hQueued(1) + hBye,
			ups: []string{hUpEhlo + hUpMail + rcptUp.String() + "DATA\r\nx\r\n.\r\n" + hQuit}},
		{name: "three errors in a row", in: hEhloIn + "FOO\r\nBAR\r\nBAZ\r\n" + noop,
			out: hBanner + hEhlo + hUnknown + hUnknown + hUnknown + hTooMany},
		{name: "three errors in a row inside a transaction", in: hEnvIn + "FOO\r\nRCPT TO:b\r\nDATA x\r\n" + noop,
			out: hEnvOut + hUnknown + hRcptSyn + "501 5.5.4 Syntax: DATA\r\n" + hTooMany, ups: []string{hUpEnv + hQuit}},
		{name: "errors not in a row", in: hEhloIn + "FOO\r\n" + noop + "FOO\r\n" + noop + "FOO\r\n" + noop + hQuit,
			out: hBanner + hEhlo + hUnknown + hOK + hUnknown + hOK + hUnknown + hOK + hBye},
		{name: "max_errors = 1", conf: "max_errors = 1", in: "FOO\r\n" + noop, out: hBanner + hUnknown + hTooMany},
		{name: "empty lines", in: "\r\n\r\n" + noop + hQuit, out: hBanner + hUnknown + hUnknown + hOK + hBye},
		{name: "verbs in any case, ASCII only", in: "eHlO client.example\r\nmAiL fRoM:<a@example.net>\r\nMA\u0131L FROM:<a@example.net>\r\nrset\r\n" + hQuit,
			out: hBanner + hEhlo + hMailOK + hUnknown + hOK + hBye},
		{name: "nothing after QUIT is read", in: hEhloIn + hQuit + noop + hMailIn, out: hBanner + hEhlo + hBye},
		// A new EHLO also lets go of the upstream: what it was told of the
		// client (XCLIENT HELO=) is stale.
		{name: "RSET and EHLO reset the upstream transaction", in: hEnvIn + "RSET\r\n" + hMailIn + hRcptIn + hEhloIn + hQuit,
			out: hEnvOut + hOK + hMailOK + hRcptOK + hEhlo + hBye,
			ups: []string{hUpEnv + "RSET\r\n" + hUpMail + hUpRcpt + hQuit}},
	}
	hRunTable(t, cases)
}

// TestHardeningEarlyTalker: a client that talks before the banner, or sends
// a PROXY header without being trusted, is refused before any banner. It
// needs a real socket: a net.Pipe holds nothing before it is read.
func TestHardeningEarlyTalker(t *testing.T) {
	for _, c := range []hcase{
		{name: "EHLO before the banner", in: hEhloIn + hQuit, out: "554 5.5.0 Error: SMTP protocol synchronization\r\n"},
		{name: "PROXY v1 from an untrusted peer", in: "PROXY TCP4 6.6.6.6 192.0.2.10 4444 25\r\n" + hEhloIn, out: ""},
		{name: "PROXY v2 from an untrusted peer", in: "\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\x06\x06\x06\x06\xc0\x00\x02\x0a\x11\x5c\x00\x19", out: ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			cfg := hConfig(t, c)
			l, err := net.Listen("tcp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			cli, err := net.Dial("tcp4", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			if _, err := cli.Write([]byte(c.in)); err != nil {
				t.Fatal(err)
			}
			srv, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			// Let the client's bytes reach the server's receive queue, as
			// they do while systemd or inetd starts willi.
			time.Sleep(50 * time.Millisecond)
			f := newFakeUpstreams(t, c.up, nil)
			done, log := hSession(t, cfg, srv, f)
			out, closed := hReadAll(cli, newHOutput())
			hFinish(t, out, closed, done, log, f).check(t, c, "loopback TCP")
		})
	}
}

// TestHardeningClientNeverReads: a client that pipelines without reading
// a reply is dropped when willi's replies cannot be written within
// command_timeout; the session ends, the upstream gets QUIT.
func TestHardeningClientNeverReads(t *testing.T) {
	c := hcase{name: "client never reads", conf: `command_timeout = "1s"`}
	cfg := hConfig(t, c)
	f := newFakeUpstreams(t, nil, nil)
	srv, cli := net.Pipe()
	defer cli.Close()
	done, log := hSession(t, cfg, srv, f)
	stop := make(chan struct{})
	// Read the replies up to the RCPT's, then never again.
	readEnv := make(chan error, 1)
	go func() {
		_, err := io.ReadFull(cli, make([]byte, len(hEnvOut)))
		readEnv <- err
	}()
	go func() {
		if _, err := cli.Write([]byte(hEnvIn)); err != nil {
			return
		}
		if <-readEnv != nil {
			return
		}
		for range 1_000_000 {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := cli.Write([]byte("NOOP\r\n")); err != nil {
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(hWait):
		t.Fatalf("session still running with a client that never reads (G6)\n%s", log)
	}
	close(stop)
	res := hFinish(t, "", true, done, log, f)
	if len(res.ups) != 1 || res.ups[0].String() != hUpEnv+hQuit {
		t.Fatalf("upstream got %v, want %q", res.ups, hUpEnv+hQuit)
	}
}

// TestHardeningSlowloris: one byte every so often holds nothing past the
// timeouts: a command must be complete within command_timeout, and the
// whole session, DATA included, ends at session_timeout.
func TestHardeningSlowloris(t *testing.T) {
	cases := []struct {
		name   string
		prefix string   // sent at once
		units  []string // then one of these per tick, in turn
		tick   time.Duration
		want   string // the replies must start with this and end in 421 4.4.2
		ups    []string
	}{
		{name: "one command, one byte at a time", units: hOneByte("NOOP " + strings.Repeat("x", 40) + "\r\n"),
			tick: 300 * time.Millisecond, want: hBanner},
		{name: "a whole command at a time", units: []string{"NOOP\r\n"}, tick: 100 * time.Millisecond, want: hBanner + hOK},
		{name: "DATA, one byte at a time", prefix: hDataIn, units: []string{"x"},
			tick: 200 * time.Millisecond, want: hEnvOut + h354, ups: []string{hPartialOf(hUpData, strings.Repeat("x", 100))}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			hc := hcase{name: c.name, conf: "command_timeout = \"1s\"\nsession_timeout = \"3s\""}
			cfg := hConfig(t, hc)
			f := newFakeUpstreams(t, nil, nil)
			srv, cli := net.Pipe()
			done, log := hSession(t, cfg, srv, f)
			go func() {
				if _, err := cli.Write([]byte(c.prefix)); err != nil {
					return
				}
				for i := 0; i < 100; i++ {
					if _, err := cli.Write([]byte(c.units[i%len(c.units)])); err != nil {
						return
					}
					time.Sleep(c.tick)
				}
			}()
			out, closed := hReadAll(cli, newHOutput())
			cli.Close()
			res := hFinish(t, out, closed, done, log, f)
			if msg := hCheckReplies(out); msg != "" || !closed {
				t.Fatalf("%s (closed %v): %q", msg, closed, out)
			}
			if !strings.HasPrefix(out, c.want) || !strings.HasSuffix(out, hTimeout) {
				t.Fatalf("client got %q, want %q ... %q\n%s", out, c.want, hTimeout, log)
			}
			if res.hang != "" {
				t.Fatal(res.hang)
			}
			if len(res.ups) != len(c.ups) {
				t.Fatalf("%d upstream connections, want %d", len(res.ups), len(c.ups))
			}
			for i, u := range res.ups {
				head, maybe, _ := strings.Cut(c.ups[i], hPartial)
				if got := u.String(); !strings.HasPrefix(got, head) || !strings.HasPrefix(maybe, got[len(head):]) {
					t.Fatalf("upstream got %q: want no end of data", got)
				}
			}
		})
	}
}
