package test

// Checks of the real peers themselves, without willi: when these fail the
// fault is in the test machine or the harness, not in willi.

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestPeerHarnessSink(t *testing.T) {
	needRoot(t)
	sinkAddr, dumpDir := startSMTPSink(t)
	msg := peerBodyMessage()
	res := pySMTP(t, pyOpts{Server: sinkAddr, Source: "127.0.0.2", Helo: "client.example",
		From: "sender@sender.test", To: []string{"alice@example.org"}, Message: msg,
		MailOptions: []string{"BODY=8BITMIME"}})
	if res.Error != "" || res.Data == nil || res.Data.Code != 250 || res.Data.Text != "2.0.0 Ok" {
		t.Fatalf("smtplib to smtp-sink: %+v", res)
	}
	m := readSinkMessages(t, dumpDir, 1, 10*time.Second)[0]
	if !bytes.Equal(m.Data, sinkForm(msg)) {
		t.Errorf("smtp-sink dump:\ngot  %q\nwant %q", m.Data, sinkForm(msg))
	}
	if m.ClientAddr != "127.0.0.2" || m.Helo != "client.example" || m.MailArgs != "<sender@sender.test> BODY=8BITMIME" {
		t.Errorf("dump headers: %+v", m)
	}
}

func TestPeerHarnessPostfix(t *testing.T) {
	needRoot(t)
	pf := startPostfix(t, postfixOpts{XClient: true, TLS: true, ProxyListener: true})

	t.Run("xclient_direct", func(t *testing.T) {
		c := dialSMTP(t, pf.Addr, "127.0.0.1")
		c.Expect(220)
		if ehlo := c.Cmd("EHLO proxy.test"); !strings.Contains(ehlo.String(), "XCLIENT") || !strings.Contains(ehlo.String(), "STARTTLS") {
			t.Fatalf("postfix EHLO lacks XCLIENT or STARTTLS: %q", ehlo.Lines)
		}
		c.StartTLS("upstream.test")
		c.Cmd("EHLO proxy.test")
		if rep := c.Cmd("XCLIENT NAME=[UNAVAILABLE] HELO=client.example PROTO=ESMTP ADDR=127.0.0.2"); rep.Code != 220 {
			t.Fatalf("XCLIENT: %q", rep.Lines)
		}
		c.Cmd("EHLO client.example")
		c.Cmd("MAIL FROM:<sender@sender.test>")
		if rep := c.Cmd("RCPT TO:<alice@example.org>"); rep.Code != 250 {
			t.Fatalf("RCPT: %q", rep.Lines)
		}
		if rep := c.Data([]byte("Subject: direct\r\n\r\nbody\r\n")); rep.Code != 250 {
			t.Fatalf("DATA: %q", rep.Lines)
		}
		c.Cmd("QUIT")
		msg := pf.waitMail(t, "alice", 20*time.Second)
		top, _, _ := postfixReceived(t, msg)
		if !strings.HasPrefix(top, "from client.example (unknown [127.0.0.2])") || !strings.Contains(top, "with ESMTPS id") {
			t.Errorf("Received: %q", top)
		}
	})

	t.Run("proxy_listener_via_haproxy", func(t *testing.T) {
		hap := startHAProxy(t, pf.ProxyAddr, "send-proxy-v2")
		res := pySMTP(t, pyOpts{Server: hap, Source: "127.0.0.2", Helo: "client.example",
			From: "sender@sender.test", To: []string{"bob@example.org"},
			Message: []byte("Subject: haproxy\r\n\r\nbody\r\n")})
		if res.Error != "" || res.Data == nil || res.Data.Code != 250 {
			t.Fatalf("smtplib via haproxy to postfix: %+v", res)
		}
		msg := pf.waitMail(t, "bob", 20*time.Second)
		if top, _, _ := postfixReceived(t, msg); !strings.HasPrefix(top, "from client.example (unknown [127.0.0.2])") {
			t.Errorf("Received: %q", top)
		}
	})
}
