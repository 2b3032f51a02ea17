package test

// Real-peer tests of STARTTLS and XCLIENT against a private Postfix that
// authorises XCLIENT from 127.0.0.1 (willi's source address) and offers
// STARTTLS. Clients connect to willi from 127.0.0.2, so Postfix's Received:
// header tells whose address it recorded.

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"willi/internal/smtptest"
)

// williTLSExtra is the [tls] table for a willi config with a generated
// certificate in dir.
func williTLSExtra(t *testing.T, dir string) string {
	cert, key := smtptest.GenCert(t, dir, "willi.test")
	return fmt.Sprintf("\n[tls]\ncert_file = %q\nkey_file = %q\n", cert, key)
}

// postfixNeuterHelo is what Postfix's smtpd makes of an XCLIENT HELO value
// (smtpd.c: neuter(NEUTER_CHARACTERS) then printable()).
func postfixNeuterHelo(h string) string {
	var b strings.Builder
	for _, r := range h {
		switch {
		case strings.ContainsRune(" <>()\\\";@", r):
			b.WriteByte('?')
		case r < 0x20 || r > 0x7e:
			b.WriteByte('?')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

var receivedQueueID = regexp.MustCompile(`\(Postfix\) with [A-Z]+ id ([0-9A-F]+)`)

// postfixReceived returns the Received: header Postfix added (the top one),
// the whole set of Received: headers, and the queue id.
func postfixReceived(t *testing.T, msg string) (top string, all []string, queueID string) {
	t.Helper()
	all = mailHeaders(msg, "Received")
	if len(all) == 0 {
		t.Fatalf("delivered message has no Received: header:\n%s", msg)
	}
	top = all[0]
	m := receivedQueueID.FindStringSubmatch(top)
	if m == nil {
		t.Fatalf("top Received: is not Postfix's: %q", top)
	}
	return top, all, m[1]
}

// rawReceived returns the Received: headers as stored (folded), for logs.
func rawReceived(msg string) string {
	head, _, _ := strings.Cut(msg, "\n\n")
	var out []string
	in := false
	for _, l := range strings.Split(head, "\n") {
		if strings.HasPrefix(l, "Received:") {
			in = true
		} else if l == "" || (l[0] != ' ' && l[0] != '\t') {
			in = false
		}
		if in {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestPeerPostfixXCLIENT(t *testing.T) {
	needRoot(t)
	bin := buildWilli(t)
	pf := startPostfix(t, postfixOpts{XClient: true, TLS: true})
	dir := t.TempDir()
	tlsExtra := williTLSExtra(t, dir)
	cfg := writeConfig(t, dir, williTestConfig(pf.Addr, tlsExtra))
	addr := startWilliSocketActivate(t, bin, cfg, false)

	// checkClientNamed asserts that Postfix recorded the original client:
	// its HELO and 127.0.0.2, the upstream hop in TLS (ESMTPS).
	checkClientNamed := func(t *testing.T, msg, helo string) {
		t.Helper()
		top, _, qid := postfixReceived(t, msg)
		t.Logf("Received: headers of the delivered message:\n%s", rawReceived(msg))
		wantFrom := "from " + helo + " (unknown [127.0.0.2])"
		if !strings.HasPrefix(top, wantFrom) {
			t.Errorf("Received: %q\ndoes not start with %q (the original client's HELO and address)", top, wantFrom)
		}
		if strings.Contains(top, "127.0.0.1") || strings.Contains(top, "willi.test") {
			t.Errorf("Received: names willi instead of the client: %q", top)
		}
		if !strings.Contains(top, "(using TLS") || !strings.Contains(top, "by upstream.test (Postfix) with ESMTPS id") {
			t.Errorf("Received: does not show an ESMTPS upstream hop: %q", top)
		}
		log := pf.waitLog(t, qid+": client=", 10*time.Second)
		if !strings.Contains(log, qid+": client=unknown[127.0.0.2]") {
			t.Errorf("postfix logged another client for %s than unknown[127.0.0.2]:\n%s", qid, log)
		}
	}

	t.Run("swaks_tls", func(t *testing.T) {
		out, err := swaks(t, "--server", addr, "--local-interface", "127.0.0.2", "--tls",
			"--helo", "client.example", "--from", "sender@sender.test", "--to", "alice@example.org",
			"--header", "Subject: xclient swaks")
		if err != nil {
			t.Fatalf("swaks --tls: %v\n%s", err, out)
		}
		if got := swaksFinalReply(out); !strings.HasPrefix(got, "250 2.0.0 Ok: queued as ") {
			t.Errorf("final reply %q, want Postfix's 250 2.0.0 Ok: queued as ...", got)
		}
		checkClientNamed(t, pf.waitMail(t, "alice", 20*time.Second), "client.example")
	})

	t.Run("smtplib_starttls", func(t *testing.T) {
		res := pySMTP(t, pyOpts{Server: addr, Source: "127.0.0.2", Helo: "py.client.example", StartTLS: true,
			From: "sender@sender.test", To: []string{"bob@example.org"},
			Message: []byte("Subject: xclient smtplib\r\n\r\nover TLS\r\n")})
		if res.Error != "" {
			t.Fatalf("smtplib: %s (%+v)", res.Error, res)
		}
		if res.StartTLS == nil || res.StartTLS.Code != 220 || res.TLSVersion == "" {
			t.Fatalf("STARTTLS: %+v %q", res.StartTLS, res.TLSVersion)
		}
		if res.EhloTLS == nil || strings.Contains(strings.ToUpper(res.EhloTLS.Text), "STARTTLS") {
			t.Errorf("EHLO inside TLS still advertises STARTTLS: %+v", res.EhloTLS)
		}
		if res.Data == nil || res.Data.Code != 250 {
			t.Fatalf("final reply %+v (rcpt %+v)", res.Data, res.Rcpt)
		}
		checkClientNamed(t, pf.waitMail(t, "bob", 20*time.Second), "py.client.example")
	})

	t.Run("client_address_none", func(t *testing.T) {
		cfgNone := writeConfig(t, t.TempDir(), williTestConfig(pf.Addr, tlsExtra+fmt.Sprintf(`
[[upstream]]
server = %q
client_address = "none"
`, pf.Addr)))
		addrNone := startWilliSocketActivate(t, bin, cfgNone, false)
		out, err := swaks(t, "--server", addrNone, "--local-interface", "127.0.0.2", "--tls",
			"--helo", "client.example", "--from", "sender@sender.test", "--to", "carol@example.org")
		if err != nil {
			t.Fatalf("swaks --tls: %v\n%s", err, out)
		}
		msg := pf.waitMail(t, "carol", 20*time.Second)
		top, _, qid := postfixReceived(t, msg)
		if strings.Contains(msg, "127.0.0.2") || strings.Contains(msg, "client.example") {
			t.Errorf("with client_address = \"none\" the upstream still learnt the client:\n%s", rawReceived(msg))
		}
		if !strings.HasPrefix(top, "from willi.test (unknown [127.0.0.1])") {
			t.Errorf("Received: %q, want willi's own HELO and address", top)
		}
		if !strings.Contains(top, "with ESMTPS id") {
			t.Errorf("Received: %q: the upstream hop should still be ESMTPS (mirror)", top)
		}
		if log := pf.waitLog(t, qid+": client=", 10*time.Second); !strings.Contains(log, qid+": client=unknown[127.0.0.1]") {
			t.Errorf("postfix log for %s does not name willi's address", qid)
		}
	})

	t.Run("hostile_helo", func(t *testing.T) {
		helo := "evil =+ spaced ADDR=127.0.0.1 NAME=localhost" // a tab gets 501 (helo-invalid transcript)
		res := pySMTP(t, pyOpts{Server: addr, Source: "127.0.0.2", Helo: helo,
			From: "sender@sender.test", To: []string{"alice@example.org"},
			Message: []byte("Subject: hostile helo\r\n\r\nhostile\r\n")})
		if res.Error != "" {
			t.Fatalf("smtplib: %s (%+v)", res.Error, res)
		}
		if res.Ehlo.Code != 250 {
			t.Fatalf("EHLO %q: %+v", helo, res.Ehlo)
		}
		if res.Data == nil || res.Data.Code != 250 {
			t.Fatalf("message refused: rcpt %+v data %+v", res.Rcpt, res.Data)
		}
		msg := pf.waitMail(t, "alice", 20*time.Second)
		top, _, qid := postfixReceived(t, msg)
		t.Logf("Received: headers:\n%s", rawReceived(msg))
		want := "from " + postfixNeuterHelo(helo) + " (unknown [127.0.0.2])"
		if !strings.HasPrefix(top, want) {
			t.Errorf("Received: %q\nwant it to start with %q (the whole HELO as one value, the real client address)", top, want)
		}
		log := pf.waitLog(t, qid+": client=", 10*time.Second)
		if !strings.Contains(log, qid+": client=unknown[127.0.0.2]") {
			t.Errorf("postfix did not record the real client address for %s", qid)
		}
		if strings.Contains(log, "Bad XCLIENT") || strings.Contains(log, "bad XCLIENT") {
			t.Errorf("postfix logged a bad XCLIENT command:\n%s", log)
		}
	})
}
