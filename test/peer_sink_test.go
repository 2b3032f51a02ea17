package test

// Real-peer tests with Postfix's smtp-sink as the upstream: willi under
// systemd-socket-activate (inetd style and LISTEN_FDS), swaks and Python's
// smtplib as clients, the delivered message compared byte for byte.

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"willi/internal/smtptest"
)

// williTestConfig is a config for real-peer tests: debug logs, short
// timeouts, one static route to server, then extra (TOML tables).
func williTestConfig(server, extra string) string {
	return fmt.Sprintf(`hostname = "willi.test"
log_level = "debug"
command_timeout = "30s"
upstream_connect_timeout = "5s"

[[mapping]]
type = "static"
server = %q
%s`, server, extra)
}

// peerBodyMessage exercises what the DATA path must carry unchanged: lines
// that need dot-stuffing, a line that is just ".", 8-bit bytes, long lines
// and empty lines.
func peerBodyMessage() []byte {
	var b bytes.Buffer
	b.WriteString("From: Sender <sender@sender.test>\r\n")
	b.WriteString("To: <alice@example.org>\r\n")
	b.WriteString("Subject: body check\r\n")
	b.WriteString("MIME-Version: 1.0\r\n")
	b.WriteString("Content-Type: text/plain; charset=iso-8859-1\r\n")
	b.WriteString("Content-Transfer-Encoding: 8bit\r\n")
	b.WriteString("\r\n")
	b.WriteString("first line\r\n")
	b.WriteString(".\r\n")
	b.WriteString("..\r\n")
	b.WriteString(".leading dot\r\n")
	b.WriteString("..two leading dots\r\n")
	b.WriteString(" .space then dot\r\n")
	b.WriteString("\r\n")
	b.WriteString("8-bit: caf\xe9 \xff\xfe\x80 na\xefve\r\n")
	b.WriteString("\r\n\r\n")
	b.WriteString(strings.Repeat("L", 990) + "\r\n")
	b.WriteString("." + strings.Repeat("d", 989) + "\r\n")
	b.WriteString("MAIL FROM:<smuggled@evil.test>\r\n")
	b.WriteString("last line\r\n")
	return b.Bytes()
}

// sinkBehindWilli starts an smtp-sink and a willi routing everything to it,
// under systemd-socket-activate; it returns willi's and the sink's addresses
// and the sink's dump directory.
func sinkBehindWilli(t *testing.T, inetd bool, extra string) (williAddr, sinkAddr, dumpDir string) {
	t.Helper()
	bin := buildWilli(t)
	sinkAddr, dumpDir = startSMTPSink(t)
	cfg := writeConfig(t, t.TempDir(), williTestConfig(sinkAddr, extra))
	williAddr = startWilliSocketActivate(t, bin, cfg, inetd)
	return williAddr, sinkAddr, dumpDir
}

// swaksFinalReply returns the server's reply to swaks' end of data (the
// first reply line after the lone "." swaks sent).
func swaksFinalReply(out string) string {
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		l = strings.TrimRight(l, "\r")
		if l == " -> ." || l == " ~> ." {
			for _, r := range lines[i+1:] {
				r = strings.TrimRight(r, "\r")
				for _, pre := range []string{"<-  ", "<** ", "<~  ", "<~* "} {
					if strings.HasPrefix(r, pre) {
						return r[len(pre):]
					}
				}
			}
		}
	}
	return ""
}

func TestPeerSocketActivationSink(t *testing.T) {
	needRoot(t)
	for _, mode := range []struct {
		name  string
		inetd bool
	}{{"inetd", true}, {"listen_fds", false}} {
		t.Run(mode.name, func(t *testing.T) {
			t.Run("ehlo", func(t *testing.T) {
				addr, _, _ := sinkBehindWilli(t, mode.inetd, "")
				c := dialSMTP(t, addr, "127.0.0.2")
				banner := c.Expect(220)
				if len(banner.Lines) != 1 || !strings.HasPrefix(banner.Lines[0], "220 willi.test ESMTP") {
					t.Errorf("banner %q, want 220 willi.test ESMTP", banner.Lines)
				}
				ehlo := c.Cmd("EHLO client.example")
				if ehlo.Code != 250 {
					t.Fatalf("EHLO: %q", ehlo.Lines)
				}
				kw := map[string]bool{}
				for _, l := range ehlo.Lines[1:] {
					kw[strings.ToUpper(strings.Fields(l[4:])[0])] = true
				}
				for _, want := range []string{"PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"} {
					if !kw[want] {
						t.Errorf("EHLO does not advertise %s: %q", want, ehlo.Lines)
					}
				}
				for _, bad := range []string{"STARTTLS", "AUTH", "XCLIENT", "XFORWARD", "CHUNKING", "BINARYMIME"} {
					if kw[bad] {
						t.Errorf("EHLO advertises %s (no [tls] / never end to end): %q", bad, ehlo.Lines)
					}
				}
				if q := c.Cmd("QUIT"); q.Code != 221 {
					t.Errorf("QUIT: %q", q.Lines)
				}
			})

			t.Run("swaks", func(t *testing.T) {
				addr, sinkAddr, dumpDir := sinkBehindWilli(t, mode.inetd, "")
				body := filepath.Join(t.TempDir(), "body.txt")
				if err := os.WriteFile(body, []byte("Subject: swaks through willi\n\n..a\n.\nb\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				args := []string{"--from", "sender@sender.test", "--to", "alice@example.org",
					"--helo", "client.example", "--data", body}
				out, err := swaks(t, append([]string{"--server", addr, "--local-interface", "127.0.0.2"}, args...)...)
				if err != nil {
					t.Fatalf("swaks through willi: %v\n%s", err, out)
				}
				if got := swaksFinalReply(out); got != "250 2.0.0 Ok" {
					t.Errorf("final reply %q, want smtp-sink's own %q\n%s", got, "250 2.0.0 Ok", out)
				}
				if r := swaksReplies(out); len(r) == 0 || !strings.HasPrefix(r[0], "220 willi.test ESMTP") {
					t.Errorf("banner: %q", r)
				}
				got := readSinkMessages(t, dumpDir, 1, 10*time.Second)
				// The same message straight to smtp-sink is the reference.
				out2, err := swaks(t, append([]string{"--server", sinkAddr}, args...)...)
				if err != nil {
					t.Fatalf("swaks direct: %v\n%s", err, out2)
				}
				ref := readSinkMessages(t, dumpDir, 2, 10*time.Second)[1]
				if !bytes.Equal(got[0].Data, ref.Data) {
					t.Errorf("message through willi differs from the same message sent directly:\nvia willi: %q\ndirect:    %q", got[0].Data, ref.Data)
				}
				if got[0].MailArgs != "<sender@sender.test>" || len(got[0].RcptArgs) != 1 || got[0].RcptArgs[0] != "<alice@example.org>" {
					t.Errorf("upstream envelope: MAIL %q RCPT %q", got[0].MailArgs, got[0].RcptArgs)
				}
			})

			t.Run("smtplib_body", func(t *testing.T) {
				addr, _, dumpDir := sinkBehindWilli(t, mode.inetd, "")
				msg := peerBodyMessage()
				res := pySMTP(t, pyOpts{Server: addr, Source: "127.0.0.2", Helo: "client.example",
					From: "sender@sender.test", To: []string{"alice@example.org"}, Message: msg,
					MailOptions: []string{"BODY=8BITMIME", fmt.Sprintf("SIZE=%d", len(msg))}})
				if res.Error != "" {
					t.Fatalf("smtplib: %s (%+v)", res.Error, res)
				}
				if res.Mail == nil || res.Mail.Code != 250 || len(res.Rcpt) != 1 || res.Rcpt[0].Code != 250 {
					t.Fatalf("envelope replies: %+v", res)
				}
				if res.Data == nil || res.Data.Code != 250 || res.Data.Text != "2.0.0 Ok" {
					t.Errorf("final reply %+v, want smtp-sink's 250 2.0.0 Ok", res.Data)
				}
				if res.Quit == nil || res.Quit.Code != 221 {
					t.Errorf("QUIT reply %+v", res.Quit)
				}
				m := readSinkMessages(t, dumpDir, 1, 10*time.Second)
				if len(m) != 1 {
					t.Fatalf("smtp-sink got %d messages, want 1", len(m))
				}
				if want := sinkForm(msg); !bytes.Equal(m[0].Data, want) {
					t.Errorf("delivered message differs:\ngot  %q\nwant %q", m[0].Data, want)
				}
				// smtp-sink offers 8BITMIME but not SIZE: BODY goes on, SIZE not.
				if m[0].MailArgs != "<sender@sender.test> BODY=8BITMIME" {
					t.Errorf("upstream MAIL arguments %q, want %q", m[0].MailArgs, "<sender@sender.test> BODY=8BITMIME")
				}
			})

			t.Run("raw_pipelined_two_transactions", func(t *testing.T) {
				addr, _, dumpDir := sinkBehindWilli(t, mode.inetd, "")
				c := dialSMTP(t, addr, "127.0.0.2")
				c.Expect(220)
				c.Cmd("EHLO client.example")
				msgs := [][]byte{
					[]byte("Subject: one\r\n\r\n.\r\n..\r\nend one\r\n"),
					[]byte("Subject: two\r\n\r\nbody two \xe4\xf6\xfc\r\n"),
				}
				for i, m := range msgs {
					// MAIL, RCPT and DATA pipelined in one write.
					c.Send(fmt.Sprintf("MAIL FROM:<s%d@sender.test>\r\nRCPT TO:<bob@example.org>\r\nDATA", i))
					for _, want := range []int{250, 250, 354} {
						c.Expect(want)
					}
					if _, err := c.Conn.Write(append(smtptest.DotStuff(m), ".\r\n"...)); err != nil {
						t.Fatal(err)
					}
					if rep := c.Expect(250); rep.Last() != "2.0.0 Ok" {
						t.Errorf("final reply %q", rep.Lines)
					}
				}
				if q := c.Cmd("QUIT"); q.Code != 221 {
					t.Errorf("QUIT: %q", q.Lines)
				}
				// File times may tie: match each message by its sender.
				got := readSinkMessages(t, dumpDir, 2, 10*time.Second)
				for i := range msgs {
					from := fmt.Sprintf("<s%d@sender.test>", i)
					found := false
					for _, g := range got {
						if strings.HasPrefix(g.MailArgs, from) {
							found = true
							if !bytes.Equal(g.Data, sinkForm(msgs[i])) {
								t.Errorf("message %d: got %q want %q", i, g.Data, sinkForm(msgs[i]))
							}
						}
					}
					if !found {
						t.Errorf("message %d from %s not delivered", i, from)
					}
				}
			})
		})
	}
}

// TestPeerLargeMessageSink sends a 50 MB message through willi to
// smtp-sink and compares size and hash of what arrived.
func TestPeerLargeMessageSink(t *testing.T) {
	needRoot(t)
	addr, sinkAddr, dumpDir := sinkBehindWilli(t, false, "")
	const size = 50_000_000
	var b bytes.Buffer
	b.Grow(size + 200)
	b.WriteString("From: <big@sender.test>\r\nTo: <alice@example.org>\r\nSubject: 50 MB\r\n\r\n")
	for i := 0; b.Len() < size-100; i++ {
		switch {
		case i%1000 == 0:
			b.WriteString(".\r\n")
		case i%97 == 0:
			fmt.Fprintf(&b, ".line %d starts with a dot\r\n", i)
		default:
			fmt.Fprintf(&b, "%08d %s\r\n", i, strings.Repeat("0123456789", 7))
		}
	}
	for b.Len() < size-2 {
		b.WriteByte('z')
	}
	b.WriteString("\r\n")
	msg := b.Bytes()
	start := time.Now()
	res := pySMTP(t, pyOpts{Server: addr, Source: "127.0.0.2", Helo: "client.example",
		From: "big@sender.test", To: []string{"alice@example.org"}, Message: msg, Timeout: 120})
	elapsed := time.Since(start)
	if res.Error != "" {
		t.Fatalf("smtplib: %s (%+v)", res.Error, res)
	}
	if res.Data == nil || res.Data.Code != 250 {
		t.Fatalf("final reply %+v (rcpt %+v)", res.Data, res.Rcpt)
	}
	t.Logf("%d bytes through willi to smtp-sink in %v", len(msg), elapsed)
	got := readSinkMessages(t, dumpDir, 1, 60*time.Second)[0]
	want := sinkForm(msg)
	if len(got.Data) != len(want) || sha256.Sum256(got.Data) != sha256.Sum256(want) {
		t.Errorf("delivered %d bytes sha256 %x, want %d bytes sha256 %x",
			len(got.Data), sha256.Sum256(got.Data), len(want), sha256.Sum256(want))
	}

	// The same message straight to smtp-sink, for the throughput ratio in
	// the log (a figure, not an assertion: these machines are noisy).
	start = time.Now()
	direct := pySMTP(t, pyOpts{Server: sinkAddr, Source: "127.0.0.2", Helo: "client.example",
		From: "big@sender.test", To: []string{"alice@example.org"}, Message: msg, Timeout: 120})
	directElapsed := time.Since(start)
	if direct.Data == nil || direct.Data.Code != 250 {
		t.Fatalf("direct to smtp-sink: %+v", direct)
	}
	t.Logf("50 MB: willi %v, direct %v, throughput ratio %.2f", elapsed.Round(time.Millisecond),
		directElapsed.Round(time.Millisecond), directElapsed.Seconds()/elapsed.Seconds())
}

// TestPeerFailover: a server string with several servers is tried in order
// when one refuses the connection or greets with 421.
func TestPeerFailover(t *testing.T) {
	needRoot(t)
	bin := buildWilli(t)
	send := func(t *testing.T, addr string) pyResult {
		return pySMTP(t, pyOpts{Server: addr, Source: "127.0.0.2", Helo: "client.example",
			From: "sender@sender.test", To: []string{"alice@example.org"},
			Message: []byte("Subject: failover\r\n\r\nfailover body\r\n")})
	}

	t.Run("connection_refused_then_sink", func(t *testing.T) {
		sinkAddr, dumpDir := startSMTPSink(t)
		server := fmt.Sprintf("127.0.0.1:%d %s", deadPort(t), sinkAddr)
		cfg := writeConfig(t, t.TempDir(), williTestConfig(server, ""))
		addr := startWilliSocketActivate(t, bin, cfg, false)
		res := send(t, addr)
		if res.Data == nil || res.Data.Code != 250 || res.Data.Text != "2.0.0 Ok" {
			t.Fatalf("want delivery via the second server, got %+v", res)
		}
		if m := readSinkMessages(t, dumpDir, 1, 10*time.Second); !bytes.Contains(m[0].Data, []byte("failover body")) {
			t.Errorf("sink got %q", m[0].Data)
		}
	})

	t.Run("banner_421_then_sink", func(t *testing.T) {
		busyAddr, busyDump := startSMTPSink(t, "-Q", "CONNECT")
		sinkAddr, dumpDir := startSMTPSink(t)
		server := busyAddr + " " + sinkAddr
		cfg := writeConfig(t, t.TempDir(), williTestConfig(server, ""))
		addr := startWilliSocketActivate(t, bin, cfg, false)
		res := send(t, addr)
		if res.Data == nil || res.Data.Code != 250 {
			t.Fatalf("want delivery via the second server, got %+v", res)
		}
		readSinkMessages(t, dumpDir, 1, 10*time.Second)
		if f, _ := filepath.Glob(filepath.Join(busyDump, "msg.*")); len(f) != 0 {
			t.Errorf("the server that greeted 421 recorded %d transactions", len(f))
		}
	})

	t.Run("all_down", func(t *testing.T) {
		server := fmt.Sprintf("127.0.0.1:%d 127.0.0.1:%d", deadPort(t), deadPort(t))
		cfg := writeConfig(t, t.TempDir(), williTestConfig(server, ""))
		addr := startWilliSocketActivate(t, bin, cfg, false)
		res := send(t, addr)
		if len(res.Rcpt) != 1 || res.Rcpt[0].Code != 451 || !strings.HasPrefix(res.Rcpt[0].Text, "4.4.1") {
			t.Fatalf("RCPT with every upstream down: %+v, want 451 4.4.1", res.Rcpt)
		}
		if res.Data != nil {
			t.Errorf("DATA answered %+v though no recipient was accepted", res.Data)
		}
	})
}
