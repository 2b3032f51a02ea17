package test

// Real-peer tests with a private Postfix instance as the upstream: its own
// replies reach the client unchanged, good recipients land in the maildir.

import (
	"strings"
	"testing"
	"time"

	"willi/internal/smtptest"
)

// postfixUnknownUserReply is what Postfix answers for an unknown mailbox at
// a virtual mailbox domain with smtpd_reject_unlisted_recipient.
func postfixUnknownUserReply(addr string) string {
	return "550 5.1.1 <" + addr + ">: Recipient address rejected: User unknown in virtual mailbox table"
}

func TestPeerPostfixUpstream(t *testing.T) {
	needRoot(t)
	bin := buildWilli(t)
	pf := startPostfix(t, postfixOpts{})
	cfg := writeConfig(t, t.TempDir(), williTestConfig(pf.Addr, ""))
	addr := startWilliSocketActivate(t, bin, cfg, false)

	t.Run("direct_reference", func(t *testing.T) {
		// What Postfix itself answers, for the comparisons below.
		c := dialSMTP(t, pf.Addr, "127.0.0.2")
		c.Expect(220)
		c.Cmd("EHLO client.example")
		c.Cmd("MAIL FROM:<sender@sender.test>")
		if rep := c.Cmd("RCPT TO:<nobody@example.org>"); rep.String() != postfixUnknownUserReply("nobody@example.org") {
			t.Fatalf("postfix itself answers %q, want %q (check the private instance)", rep.Lines, postfixUnknownUserReply("nobody@example.org"))
		}
		c.Cmd("QUIT")
	})

	t.Run("unknown_user_raw", func(t *testing.T) {
		c := dialSMTP(t, addr, "127.0.0.2")
		c.Expect(220)
		c.Cmd("EHLO client.example")
		if rep := c.Cmd("MAIL FROM:<sender@sender.test>"); rep.Code != 250 {
			t.Fatalf("MAIL: %q", rep.Lines)
		}
		if rep := c.Cmd("RCPT TO:<nobody@example.org>"); rep.String() != postfixUnknownUserReply("nobody@example.org") {
			t.Errorf("RCPT of an unknown user: got %q, want Postfix's %q", rep.Lines, postfixUnknownUserReply("nobody@example.org"))
		}
		// The transaction is still open: a good recipient goes through.
		if rep := c.Cmd("RCPT TO:<carol@example.org>"); rep.Code != 250 {
			t.Fatalf("RCPT carol: %q", rep.Lines)
		}
		msg := []byte("Subject: raw\r\n\r\nraw body\r\n.\r\n")
		if rep := c.Data(smtptest.DotStuff(msg)); rep.Code != 250 || !strings.HasPrefix(rep.Last(), "2.0.0 Ok: queued as ") {
			t.Errorf("final reply %q, want Postfix's 250 2.0.0 Ok: queued as ...", rep.Lines)
		}
		if rep := c.Cmd("QUIT"); rep.Code != 221 {
			t.Errorf("QUIT: %q", rep.Lines)
		}
		got := pf.waitMail(t, "carol", 20*time.Second)
		if body := mailBody(got); body != "raw body\n.\n" {
			t.Errorf("delivered body %q, want %q", body, "raw body\n.\n")
		}
	})

	t.Run("unknown_user_swaks", func(t *testing.T) {
		out, err := swaks(t, "--server", addr, "--local-interface", "127.0.0.2",
			"--helo", "client.example", "--from", "sender@sender.test", "--to", "nobody@example.org")
		if err == nil {
			t.Errorf("swaks succeeded though the recipient is unknown:\n%s", out)
		}
		if !strings.Contains(out, "\n<** "+postfixUnknownUserReply("nobody@example.org")+"\n") {
			t.Errorf("swaks did not see Postfix's reply %q:\n%s", postfixUnknownUserReply("nobody@example.org"), out)
		}
	})

	t.Run("smtplib_mixed_recipients", func(t *testing.T) {
		msg := peerBodyMessage()
		res := pySMTP(t, pyOpts{Server: addr, Source: "127.0.0.2", Helo: "client.example",
			From: "sender@sender.test", To: []string{"alice@example.org", "nobody@example.org"},
			Message: msg, MailOptions: []string{"BODY=8BITMIME"}})
		if res.Error != "" {
			t.Fatalf("smtplib: %s (%+v)", res.Error, res)
		}
		if len(res.Rcpt) != 2 || res.Rcpt[0].Code != 250 {
			t.Fatalf("RCPT replies %+v", res.Rcpt)
		}
		want := strings.TrimPrefix(postfixUnknownUserReply("nobody@example.org"), "550 ")
		if res.Rcpt[1].Code != 550 || res.Rcpt[1].Text != want {
			t.Errorf("unknown recipient: got %d %q, want 550 %q", res.Rcpt[1].Code, res.Rcpt[1].Text, want)
		}
		if res.Data == nil || res.Data.Code != 250 || !strings.HasPrefix(res.Data.Text, "2.0.0 Ok: queued as ") {
			t.Fatalf("final reply %+v", res.Data)
		}
		got := pf.waitMail(t, "alice", 20*time.Second)
		// Postfix stores LF lines; its headers come first.
		_, wantBody, _ := strings.Cut(string(sinkForm(msg)), "\n\n")
		if body := mailBody(got); body != wantBody {
			t.Errorf("delivered body differs:\ngot  %q\nwant %q", body, wantBody)
		}
		if subj := mailHeaders(got, "Subject"); len(subj) != 1 || subj[0] != "body check" {
			t.Errorf("Subject headers %q", subj)
		}
		pf.noNewMail(t, "bob", 0)
	})
}
