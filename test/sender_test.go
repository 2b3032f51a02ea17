package test

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"willi/internal/smtptest"
)

// Real sending MTAs (Postfix and Exim) through willi, started as the units
// start it (one process per connection, the socket on standard input), to
// real Postfix upstreams and smtp-sink.

// senderRig is one sending MTA, willi and the upstreams.
type senderRig struct {
	mta   senderMTA
	willi *williListener
	up    *postfixInstance // example.org; every recipient but bob's
	up2   *postfixInstance // bob@example.org, with split
}

type senderRigOpts struct {
	TLS         bool   // STARTTLS sender -> willi -> upstream (mirror)
	Split       bool   // bob@example.org routed to a second upstream
	SplitPolicy string // willi's split_recipients; "" for the default
}

func newSenderRig(t *testing.T, name string, o senderRigOpts) *senderRig {
	t.Helper()
	r := &senderRig{}
	users := []string{"alice", "bob", "carol", "jörg"}
	r.up = startPostfix(t, postfixOpts{XClient: true, TLS: o.TLS, Users: users})
	dir := t.TempDir()
	routes := "pattern,server\n"
	if o.Split {
		r.up2 = startPostfix(t, postfixOpts{XClient: true, TLS: o.TLS, Users: users})
		routes += "bob@example.org," + r.up2.Addr + "\n"
	}
	routes += "example.org," + r.up.Addr + "\n"
	if err := os.WriteFile(filepath.Join(dir, "routes.csv"), []byte(routes), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := "hostname = \"willi.test\"\n"
	if o.SplitPolicy != "" {
		conf += fmt.Sprintf("split_recipients = %q\n", o.SplitPolicy)
	}
	if o.TLS {
		cert, key := smtptest.GenCert(t, dir, "willi.test")
		conf += fmt.Sprintf("[tls]\ncert_file = %q\nkey_file = %q\n", cert, key)
	}
	conf += "[[mapping]]\ntype = \"csv\"\nfile = \"routes.csv\"\n"
	r.willi = startWilliActivated(t, buildWilli(t), writeConfig(t, dir, conf), williLaunchOpts{Inetd: true})
	r.mta = startSender(t, name, senderOpts{Relay: r.willi.Addr, TLS: o.TLS})
	return r
}

// williLog is willi's standard error so far.
func (r *senderRig) williLog() string {
	b, _ := os.ReadFile(r.willi.StderrPath)
	return string(b)
}

// from is the envelope sender at the MTA's own domain (bounces land there).
func (r *senderRig) from(user string) string { return user + "@" + r.mta.Domain() }

func senderMessage(from, to, subject, body string) []byte {
	return []byte(fmt.Sprintf("From: <%s>\nTo: <%s>\nSubject: %s\nMessage-ID: <%d.%s>\n\n%s",
		from, to, subject, time.Now().UnixNano(), from, body))
}

func forEachSender(t *testing.T, f func(t *testing.T, name string)) {
	for _, name := range senderNames {
		t.Run(name, func(t *testing.T) { f(t, name) })
	}
}

// TestSenderPlain runs, for each MTA on one plaintext rig: one recipient,
// SMTPUTF8, an unknown user.
func TestSenderPlain(t *testing.T) {
	forEachSender(t, func(t *testing.T, name string) {
		r := newSenderRig(t, name, senderRigOpts{})
		t.Run("one-recipient", func(t *testing.T) { senderOneRecipient(t, r) })
		t.Run("smtputf8", func(t *testing.T) { senderSMTPUTF8(t, r) })
		t.Run("unknown-user", func(t *testing.T) { senderUnknownUser(t, r) })
	})
}

// TestSenderTLS runs, for each MTA on one rig with STARTTLS on both hops:
// the TLS checks, then a 10 MB message.
func TestSenderTLS(t *testing.T) {
	body := bigBody(10 << 20)
	forEachSender(t, func(t *testing.T, name string) {
		r := newSenderRig(t, name, senderRigOpts{TLS: true})
		t.Run("tls", func(t *testing.T) { senderTLS(t, r) })
		t.Run("large", func(t *testing.T) { senderLargeMessage(t, r, body) })
	})
}

// senderOneRecipient: a message from the MTA reaches the upstream's
// mailbox, and the MTA logs willi's relayed 250 with the upstream's queue id.
func senderOneRecipient(t *testing.T, r *senderRig) {
	name := r.mta.Name()
	body := "one recipient from " + name + "\n"
	r.mta.Submit(t, r.from("sender"), []string{"alice@example.org"},
		senderMessage(r.from("sender"), "alice@example.org", "one "+name, body))
	msg := r.up.waitMail(t, "alice", 30*time.Second)
	if got := mailBody(msg); got != body {
		t.Errorf("body %q, want %q", got, body)
	}
	line := r.mta.WaitSent(t, "alice@example.org", 30*time.Second)
	if !strings.Contains(line, "queued as") {
		t.Errorf("sender did not log the upstream's queue id: %s", line)
	}
	if q := r.mta.Queue(t); q != "" {
		t.Errorf("sender queue not empty:\n%s", q)
	}
}

// senderTLS: the MTA's opportunistic STARTTLS reaches willi, and willi
// mirrors it to the upstream (its Received: header says TLS).
func senderTLS(t *testing.T, r *senderRig) {
	name := r.mta.Name()
	r.mta.Submit(t, r.from("sender"), []string{"alice@example.org"},
		senderMessage(r.from("sender"), "alice@example.org", "tls "+name, "over TLS\n"))
	msg := r.up.waitMail(t, "alice", 30*time.Second)
	line := r.mta.WaitSent(t, "alice@example.org", 30*time.Second)
	switch name {
	case "postfix":
		r.mta.WaitLog(t, 10*time.Second, "TLS connection established to", "TLSv1.3")
	case "exim":
		if !strings.Contains(line, "X=TLS1.3") {
			t.Errorf("exim did not deliver over TLS 1.3: %s", line)
		}
	}
	received := mailHeaders(msg, "Received")
	if len(received) == 0 || !strings.Contains(received[0], "using TLSv1.3") {
		t.Errorf("upstream's Received: does not say TLS: %q", received)
	}
	if !strings.Contains(r.williLog(), `tls="TLS 1.3`) {
		t.Errorf("willi's session log does not say TLS 1.3")
	}
}

// TestSenderSplitRecipients: recipients of two upstreams in one message.
// willi answers 452 4.5.3 to the recipient whose upstream differs from the
// transaction's (split_recipients = "defer"). Exim sends it at once
// in a second transaction on the same connection; Postfix defers it to its
// queue, and it is delivered when the queue is flushed. Each recipient is
// delivered once, at its own upstream.
func TestSenderSplitRecipients(t *testing.T) {
	forEachSender(t, func(t *testing.T, name string) {
		r := newSenderRig(t, name, senderRigOpts{Split: true, SplitPolicy: "defer"})
		start := time.Now()
		r.mta.Submit(t, r.from("sender"), []string{"alice@example.org", "bob@example.org"},
			senderMessage(r.from("sender"), "alice@example.org, bob@example.org", "split "+name, "split\n"))
		r.up.waitMail(t, "alice", 30*time.Second)
		switch name {
		case "exim":
			r.up2.waitMail(t, "bob", 30*time.Second)
			t.Logf("exim: both recipients delivered %v after submission", time.Since(start).Round(time.Millisecond))
			// One session with two transactions.
			if !regexp.MustCompile(`msg=session .*messages=2 `).MatchString(r.williLog()) {
				t.Errorf("willi did not log one session with 2 messages:\n%s", r.williLog())
			}
		case "postfix":
			r.mta.WaitLog(t, 30*time.Second, "to=<bob@example.org>", "status=deferred", "452 4.5.3")
			if q := r.mta.Queue(t); !strings.Contains(q, "bob@example.org") {
				t.Fatalf("postfix queue does not hold bob's copy:\n%s", q)
			}
			deferredAt := time.Since(start)
			r.mta.Flush(t)
			r.up2.waitMail(t, "bob", 30*time.Second)
			t.Logf("postfix: bob deferred %v after submission; delivered %v after submission once the queue was flushed (without a flush: the next queue run, minimal_backoff_time 300s by default)",
				deferredAt.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		}
		r.up.noNewMail(t, "bob", 0)
		r.up2.noNewMail(t, "alice", 500*time.Millisecond)
		if q := r.mta.Queue(t); q != "" {
			t.Errorf("sender queue not empty:\n%s", q)
		}
	})
}

// TestSenderFanout: with split_recipients = "fanout", a message for two
// recipients at one upstream and one at another goes through in one
// transaction: each real sender gets 250 for all three, both upstreams
// deliver at once (nothing is deferred to the sender's queue), and an
// unknown user is refused at RCPT (bounced by the sender) without holding
// up the others. The delay from submission to
// the last delivery is logged (the goal is 2 s; bench/README.md).
func TestSenderFanout(t *testing.T) {
	forEachSender(t, func(t *testing.T, name string) {
		r := newSenderRig(t, name, senderRigOpts{Split: true, SplitPolicy: "fanout"})
		start := time.Now()
		rcpts := []string{"alice@example.org", "carol@example.org", "bob@example.org"}
		r.mta.Submit(t, r.from("sender"), rcpts,
			senderMessage(r.from("sender"), strings.Join(rcpts, ", "), "fanout "+name, "fanout\n"))
		r.up.waitMail(t, "alice", 30*time.Second)
		r.up.waitMail(t, "carol", 30*time.Second)
		r.up2.waitMail(t, "bob", 30*time.Second)
		t.Logf("%s: a, a, b delivered to both upstreams %v after submission", name, time.Since(start).Round(time.Millisecond))
		r.up.noNewMail(t, "bob", 0)
		r.up2.noNewMail(t, "alice", 500*time.Millisecond)
		if q := r.mta.Queue(t); q != "" {
			t.Errorf("sender queue not empty:\n%s", q)
		}
		if !regexp.MustCompile(`msg=transaction .*rcpts=(alice|carol|bob)@example.org:250,(alice|carol|bob)@example.org:250,(alice|carol|bob)@example.org:250 .*result="250 `).MatchString(r.williLog()) {
			t.Errorf("willi did not log one transaction with all three recipients delivered:\n%s", r.williLog())
		}

		// An unknown user: refused at RCPT, the others delivered in the
		// same transaction.
		rcpts = []string{"alice@example.org", "bob@example.org", "nosuch@example.org"}
		r.mta.Submit(t, r.from("sender"), rcpts,
			senderMessage(r.from("sender"), strings.Join(rcpts, ", "), "fanout-unknown "+name, "fanout\n"))
		r.up.waitMail(t, "alice", 30*time.Second)
		r.up2.waitMail(t, "bob", 30*time.Second)
		r.mta.WaitLog(t, 30*time.Second, "nosuch@example.org", "550")
	})
}

// bigBody is about size bytes of 76-character lines of pseudo-random
// base64-like text, with dots at line starts (dot-stuffing) and a few 8-bit
// lines.
func bigBody(size int) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	rng := rand.New(rand.NewSource(42))
	var b strings.Builder
	line := make([]byte, 76)
	for n := 0; b.Len() < size; n++ {
		for i := range line {
			line[i] = alphabet[rng.Intn(len(alphabet))]
		}
		switch n % 5000 {
		case 17:
			b.WriteString(".")
		case 18:
			b.WriteString("..leading dots\n")
		case 19:
			b.WriteString("8-bit: Grüße aus Köln\n")
		}
		b.Write(line)
		b.WriteByte('\n')
	}
	return b.String()
}

// senderLargeMessage: a 10 MB message over TLS arrives byte for byte.
func senderLargeMessage(t *testing.T, r *senderRig, body string) {
	name := r.mta.Name()
	start := time.Now()
	r.mta.Submit(t, r.from("sender"), []string{"carol@example.org"},
		append([]byte("Content-Transfer-Encoding: 8bit\n"), senderMessage(r.from("sender"), "carol@example.org", "large "+name, body)...))
	msg := r.up.waitMail(t, "carol", 120*time.Second)
	t.Logf("%s: %d bytes delivered in %v", name, len(body), time.Since(start).Round(time.Millisecond))
	if got := mailBody(msg); got != body {
		t.Errorf("body differs: %d bytes received, %d sent; first difference at byte %d",
			len(got), len(body), firstDifference(got, body))
	}
}

func firstDifference(a, b string) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) < len(b) {
		return len(a)
	}
	return len(b)
}

// senderSMTPUTF8: an internationalised sender address, a UTF-8 subject
// and an 8-bit body arrive unchanged, relayed with SMTPUTF8 (the upstream's
// Received: says "with UTF8SMTP", RFC 6531's name for ESMTP with SMTPUTF8).
func senderSMTPUTF8(t *testing.T, r *senderRig) {
	name := r.mta.Name()
	from := r.from("jörg")
	body := "Grüße aus Köln, 東京からこんにちは\n"
	subject := "Grüße " + name
	r.mta.Submit(t, from, []string{"jörg@example.org"},
		append([]byte("MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n"),
			senderMessage(from, "jörg@example.org", subject, body)...))
	msg := r.up.waitMail(t, "jörg", 30*time.Second)
	if got := mailBody(msg); got != body {
		t.Errorf("body %q, want %q", got, body)
	}
	if got := mailHeaders(msg, "Subject"); len(got) != 1 || got[0] != subject {
		t.Errorf("Subject %q, want %q", got, subject)
	}
	if rp := mailHeaders(msg, "Return-Path"); len(rp) != 1 || rp[0] != "<"+from+">" {
		t.Errorf("Return-Path %q, want <%s>", rp, from)
	}
	if received := mailHeaders(msg, "Received"); len(received) == 0 || !strings.Contains(received[0], " with UTF8SMTP ") {
		t.Errorf("upstream's Received: does not say UTF8SMTP: %q", received)
	}
}

// senderUnknownUser: the upstream's 550 for an unknown user reaches the
// sender as a permanent failure (its log and its bounce to the envelope
// sender); the other recipient is delivered.
func senderUnknownUser(t *testing.T, r *senderRig) {
	name := r.mta.Name()
	r.mta.Submit(t, r.from("sender"), []string{"alice@example.org", "nobody@example.org"},
		senderMessage(r.from("sender"), "alice@example.org", "unknown "+name, "hello\n"))
	r.up.waitMail(t, "alice", 30*time.Second)
	const reject = "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"
	switch name {
	case "postfix":
		r.mta.WaitLog(t, 30*time.Second, "to=<nobody@example.org>", "status=bounced", reject)
	case "exim":
		r.mta.WaitLog(t, 30*time.Second, "** nobody@example.org", reject)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		bounces := r.mta.Mailbox("sender")
		if len(bounces) == 1 && strings.Contains(bounces[0], "nobody@example.org") && strings.Contains(bounces[0], "550 5.1.1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no bounce naming nobody@example.org and the 550 in the sender's mailbox: %q", bounces)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if q := r.mta.Queue(t); q != "" {
		t.Errorf("sender queue not empty:\n%s", q)
	}
}

// TestSenderBurst: 20 messages submitted at once all reach smtp-sink, each
// once, and nothing stays queued at the sender.
func TestSenderBurst(t *testing.T) {
	const n = 20
	forEachSender(t, func(t *testing.T, name string) {
		sinkAddr, dumpDir := startSMTPSink(t)
		dir := t.TempDir()
		conf := fmt.Sprintf("hostname = \"willi.test\"\n[[mapping]]\ntype = \"static\"\nserver = %q\n"+
			"[[upstream]]\nserver = %q\nclient_address = \"none\"\n", sinkAddr, sinkAddr)
		w := startWilliActivated(t, buildWilli(t), writeConfig(t, dir, conf), williLaunchOpts{Inetd: true})
		mta := startSender(t, name, senderOpts{Relay: w.Addr})
		from := "sender@" + mta.Domain()
		start := time.Now()
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				mta.Submit(t, from, []string{"rcpt@example.org"},
					senderMessage(from, "rcpt@example.org", fmt.Sprintf("burst %d", i), fmt.Sprintf("message %d\n", i)))
			}(i)
		}
		wg.Wait()
		msgs := readSinkMessages(t, dumpDir, n, 60*time.Second)
		t.Logf("%s: %d messages at smtp-sink %v after the burst began", name, len(msgs), time.Since(start).Round(time.Millisecond))
		seen := map[string]int{}
		for _, m := range msgs {
			for _, l := range strings.Split(string(m.Data), "\n") {
				if strings.HasPrefix(l, "Subject: burst ") {
					seen[l]++
				}
			}
		}
		for i := 0; i < n; i++ {
			if c := seen[fmt.Sprintf("Subject: burst %d", i)]; c != 1 {
				t.Errorf("message %d arrived %d times", i, c)
			}
		}
		if len(msgs) != n {
			t.Errorf("%d transactions at smtp-sink, want %d", len(msgs), n)
		}
		// Postfix logs the last delivery a moment after smtp-sink has it.
		deadline := time.Now().Add(10 * time.Second)
		for mta.Queue(t) != "" && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if q := mta.Queue(t); q != "" {
			t.Errorf("sender queue not empty:\n%s", q)
		}
	})
}
