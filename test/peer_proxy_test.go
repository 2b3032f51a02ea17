package test

// Real-peer tests of the PROXY protocol: a real HAProxy in front of willi
// (send-proxy-v2 and send-proxy), and willi speaking PROXY protocol to a
// Postfix with smtpd_upstream_proxy_protocol = haproxy. The client connects
// from 127.0.0.2; HAProxy and willi connect from 127.0.0.1.

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

func TestPeerHAProxyInFront(t *testing.T) {
	needRoot(t)
	bin := buildWilli(t)
	pf := startPostfix(t, postfixOpts{XClient: true})
	cfg := writeConfig(t, t.TempDir(), williTestConfig(pf.Addr, `
[proxy_protocol]
trusted = ["127.0.0.1/32"]
`))
	williAddr := startWilliSocketActivate(t, bin, cfg, false)

	for _, mode := range []struct{ name, user string }{
		{"send-proxy-v2", "alice"},
		{"send-proxy", "bob"},
	} {
		t.Run(mode.name, func(t *testing.T) {
			hap := startHAProxy(t, williAddr, mode.name)
			res := pySMTP(t, pyOpts{Server: hap, Source: "127.0.0.2", Helo: "lb.client.example",
				From: "sender@sender.test", To: []string{mode.user + "@example.org"},
				Message: []byte("Subject: behind haproxy " + mode.name + "\r\n\r\nvia haproxy\r\n")})
			if res.Error != "" {
				t.Fatalf("smtplib through haproxy: %s (%+v)", res.Error, res)
			}
			if !strings.HasPrefix(res.Banner.Text, "willi.test ESMTP") || res.Banner.Code != 220 {
				t.Errorf("banner through haproxy: %+v", res.Banner)
			}
			if res.Data == nil || res.Data.Code != 250 {
				t.Fatalf("final reply %+v (rcpt %+v)", res.Data, res.Rcpt)
			}
			msg := pf.waitMail(t, mode.user, 20*time.Second)
			top, _, qid := postfixReceived(t, msg)
			t.Logf("Received: headers:\n%s", rawReceived(msg))
			if want := "from lb.client.example (unknown [127.0.0.2])"; !strings.HasPrefix(top, want) {
				t.Errorf("Received: %q, want it to start with %q (the client behind haproxy)", top, want)
			}
			if log := pf.waitLog(t, qid+": client=", 10*time.Second); !strings.Contains(log, qid+": client=unknown[127.0.0.2]") {
				t.Errorf("postfix did not record the client behind haproxy for %s", qid)
			}
		})
	}

	t.Run("trusted_peer_without_header", func(t *testing.T) {
		// 127.0.0.1 is trusted and must send a PROXY header; an SMTP
		// command instead gets no banner, only a close.
		c := dialSMTP(t, williAddr, "127.0.0.1")
		c.Conn.SetDeadline(time.Now().Add(15 * time.Second))
		if _, err := io.WriteString(c.Conn, "EHLO client.example\r\n"); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(c.Conn)
		if err != nil {
			t.Errorf("reading until close: %v (got %q): willi should close the connection", err, got)
		}
		if strings.HasPrefix(string(got), "220") {
			t.Errorf("trusted peer without PROXY header got a banner: %q", got)
		}
	})

	t.Run("untrusted_peer_plain", func(t *testing.T) {
		// 127.0.0.2 is not a trusted peer: a plain SMTP session.
		c := dialSMTP(t, williAddr, "127.0.0.2")
		if rep := c.Expect(220); !strings.HasPrefix(rep.Lines[0], "220 willi.test ESMTP") {
			t.Errorf("banner %q", rep.Lines)
		}
		c.Cmd("QUIT")
	})
}

func TestPeerProxyProtocolOut(t *testing.T) {
	needRoot(t)
	bin := buildWilli(t)
	pf := startPostfix(t, postfixOpts{ProxyListener: true})
	for _, mode := range []struct{ kind, user string }{
		{"proxy-v2", "alice"},
		{"proxy-v1", "bob"},
	} {
		t.Run(mode.kind, func(t *testing.T) {
			cfg := writeConfig(t, t.TempDir(), williTestConfig(pf.ProxyAddr, fmt.Sprintf(`
[[upstream]]
server = %q
client_address = %q
`, pf.ProxyAddr, mode.kind)))
			addr := startWilliSocketActivate(t, bin, cfg, false)
			res := pySMTP(t, pyOpts{Server: addr, Source: "127.0.0.2", Helo: "client.example",
				From: "sender@sender.test", To: []string{mode.user + "@example.org"},
				Message: []byte("Subject: proxy protocol out " + mode.kind + "\r\n\r\nbody\r\n")})
			if res.Error != "" {
				t.Fatalf("smtplib: %s (%+v)", res.Error, res)
			}
			if res.Data == nil || res.Data.Code != 250 || !strings.HasPrefix(res.Data.Text, "2.0.0 Ok: queued as ") {
				t.Fatalf("final reply %+v (rcpt %+v)", res.Data, res.Rcpt)
			}
			msg := pf.waitMail(t, mode.user, 20*time.Second)
			top, _, qid := postfixReceived(t, msg)
			t.Logf("Received: headers:\n%s", rawReceived(msg))
			if !strings.Contains(top, "(unknown [127.0.0.2])") || strings.Contains(top, "127.0.0.1") {
				t.Errorf("Received: %q, want the original client [127.0.0.2] learnt through %s", top, mode.kind)
			}
			if log := pf.waitLog(t, qid+": client=", 10*time.Second); !strings.Contains(log, qid+": client=unknown[127.0.0.2]") {
				t.Errorf("postfix did not record the client for %s", qid)
			}
		})
	}

	t.Run("haproxy_in_proxy_v2_out", func(t *testing.T) {
		// HAProxy -> willi -> Postfix, PROXY protocol on both hops.
		cfg := writeConfig(t, t.TempDir(), williTestConfig(pf.ProxyAddr, fmt.Sprintf(`
[proxy_protocol]
trusted = ["127.0.0.1/32"]

[[upstream]]
server = %q
client_address = "proxy-v2"
`, pf.ProxyAddr)))
		williAddr := startWilliSocketActivate(t, bin, cfg, false)
		hap := startHAProxy(t, williAddr, "send-proxy-v2")
		res := pySMTP(t, pyOpts{Server: hap, Source: "127.0.0.2", Helo: "client.example",
			From: "sender@sender.test", To: []string{"carol@example.org"},
			Message: []byte("Subject: proxy both ways\r\n\r\nbody\r\n")})
		if res.Error != "" || res.Data == nil || res.Data.Code != 250 {
			t.Fatalf("smtplib: %s (%+v)", res.Error, res)
		}
		msg := pf.waitMail(t, "carol", 20*time.Second)
		if top, _, _ := postfixReceived(t, msg); !strings.Contains(top, "(unknown [127.0.0.2])") {
			t.Errorf("Received: %q, want the original client [127.0.0.2]", top)
		}
	})
}
