package main

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"
)

// The command line parser (Session.readCommand and Session.dispatch,
// session.go): how octets become a command line or a refusal, and how a
// line becomes a verb, its argument and a reply, in every phase; and
// FuzzCommand.

// memConn is a client connection that reads from a fixed input and throws
// away what is written; deadlines are never reached.
type memConn struct {
	r   *bytes.Reader
	out bytes.Buffer
}

func (c *memConn) Read(p []byte) (int, error)         { return c.r.Read(p) }
func (c *memConn) Write(p []byte) (int, error)        { return c.out.Write(p) }
func (c *memConn) Close() error                       { return nil }
func (c *memConn) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (c *memConn) RemoteAddr() net.Addr               { return &net.TCPAddr{} }
func (c *memConn) SetDeadline(t time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(t time.Time) error { return nil }

// memSession is a session reading in, greeted (EHLO) when greeted is set,
// whose upstreams are all unreachable.
func memSession(t testing.TB, in []byte, greeted bool) *Session {
	cfg, err := parseConfig("hostname = \"mx.test\"\n[[mapping]]\ntype = \"static\"\nserver = \"up1.test:25\"\n", "/nonexistent/willi.conf")
	if err != nil {
		t.Fatal(err)
	}
	s := newSession(cfg, &memConn{r: bytes.NewReader(in)}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	s.dial = (&fzUpstreams{stopped: true}).dial
	if greeted {
		s.helo, s.esmtp, s.phase = "client.example", true, phaseReady
	}
	return s
}

// readResult is what readCommand made of one line: the line, or the code
// and enhanced code of its refusal, or "close" or "eof".
func readResult(s *Session) string {
	line, r, err := s.readCommand()
	switch {
	case err == errNonSMTP:
		return "close"
	case err != nil:
		return "eof"
	case r != nil:
		return string(r.appendTo(nil))
	}
	return "line " + line
}

const (
	rTooLong  = "500 5.5.2 Error: line too long\r\n"
	rBadChars = "500 5.5.2 Error: bad characters in command\r\n"
	rBareLF   = "500 5.5.2 Error: command not terminated by CRLF\r\n"
)

func TestReadCommand(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"NOOP\r\n", []string{"line NOOP", "eof"}},
		{"noop\r\nQuit\r\n", []string{"line noop", "line Quit", "eof"}},
		{"\r\n", []string{"line ", "eof"}},
		{"NOOP", []string{"eof"}},
		{"NOOP\r", []string{"eof"}},
		{"", []string{"eof"}},
		// Line ends: CRLF only.
		{"NOOP\n", []string{rBareLF, "eof"}},
		{"\n", []string{rBareLF, "eof"}},
		{"NOOP\r\r\n", []string{rBadChars, "eof"}},
		{"NO\rOP\r\n", []string{rBadChars, "eof"}},
		{"NOOP\n\r\nRSET\r\n", []string{rBareLF, "line ", "line RSET", "eof"}},
		{"DATA\nMAIL FROM:<a@b>\r\n", []string{rBareLF, "line MAIL FROM:<a@b>", "eof"}},
		// NUL and other control octets; tab, space and 8-bit pass.
		{"NO\x00OP\r\nNOOP\r\n", []string{rBadChars, "line NOOP", "eof"}},
		{"NOOP\x00\r\n", []string{rBadChars, "eof"}},
		{"NOOP \x1b[2J\r\n", []string{rBadChars, "eof"}},
		{"NOOP \x7f\r\n", []string{rBadChars, "eof"}},
		{"NOOP \x01\r\n", []string{rBadChars, "eof"}},
		{"NOOP \x1f\r\n", []string{rBadChars, "eof"}},
		{"MAIL FROM:<a@b>\tSIZE=1\r\n", []string{"line MAIL FROM:<a@b>\tSIZE=1", "eof"}},
		{"MAIL FROM:<\xc3\xbc@b> SMTPUTF8\r\n", []string{"line MAIL FROM:<\xc3\xbc@b> SMTPUTF8", "eof"}},
		{"NOOP \xff\xfe\r\n", []string{"line NOOP \xff\xfe", "eof"}},
		{"NOOP  \r\n", []string{"line NOOP  ", "eof"}},
		// Length: 512 octets with CRLF pass, 513 do not; a longer line is
		// discarded to its LF and the next line is read.
		{strings.Repeat("N", 510) + "\r\n", []string{"line " + strings.Repeat("N", 510), "eof"}},
		{strings.Repeat("N", 511) + "\r\nNOOP\r\n", []string{rTooLong, "line NOOP", "eof"}},
		{strings.Repeat("N", 511) + "\n", []string{rBareLF, "eof"}},
		{strings.Repeat("N", 512) + "\n", []string{rTooLong, "eof"}},
		{strings.Repeat("N", 100000) + "\r\nNOOP\r\n", []string{rTooLong, "line NOOP", "eof"}},
		{strings.Repeat("N", 100000) + "\nNOOP\r\n", []string{rTooLong, "line NOOP", "eof"}},
		{strings.Repeat("N", 100000), []string{"eof"}},
		{"NOOP " + strings.Repeat("\x00", 600) + "\r\nNOOP\r\n", []string{rTooLong, "line NOOP", "eof"}},
		// Not SMTP: the first octet of a command is not a letter.
		{"\x16\x03\x01\x00\xa5\x01\x00", []string{"close"}},
		{"\x80\x2e\x01\x00\x02", []string{"close"}},
		{"\x00NOOP\r\n", []string{"close"}},
		{" NOOP\r\n", []string{"close"}},
		{"\tNOOP\r\n", []string{"close"}},
		{"1NOOP\r\n", []string{"close"}},
		{".\r\n", []string{"close"}},
		{"\xc3\x89HLO x\r\n", []string{"close"}},
		{"NOOP\r\n\x16\x03\x01", []string{"line NOOP", "close"}},
	}
	for _, tc := range tests {
		s := memSession(t, []byte(tc.in), true)
		var got []string
		for len(got) < len(tc.want) {
			r := readResult(s)
			got = append(got, r)
			if r == "eof" || r == "close" {
				break
			}
		}
		if strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("%.60q: got %.200q, want %.200q", tc.in, got, tc.want)
		}
	}
}

// Replies to one command line, by phase: greet (banner only), ready (after
// EHLO), mail (MAIL accepted), rcpt (a recipient accepted, upstream open).
var commandCases = []struct {
	phase string
	line  string
	want  string // the whole reply, or its start when it ends in "..."
	close bool
}{
	// EHLO and HELO.
	{"greet", "EHLO client.example", "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n", false},
	{"greet", "ehlo client.example", "250-mx.test\r\n...", false},
	{"greet", "eHlO client.example", "250-mx.test\r\n...", false},
	{"greet", "EHLO [192.0.2.1]", "250-mx.test\r\n...", false},
	{"greet", "EHLO  client.example ", "250-mx.test\r\n...", false},
	{"greet", "EHLO", "501 5.5.4 Syntax: EHLO hostname\r\n", false},
	{"greet", "EHLO ", "501 5.5.4 Syntax: EHLO hostname\r\n", false},
	{"greet", "EHLO   ", "501 5.5.4 Syntax: EHLO hostname\r\n", false},
	{"greet", "EHLO\tclient.example", "500 5.5.2 Error: command not recognized\r\n", false},
	{"greet", "EHLOclient.example", "500 5.5.2 Error: command not recognized\r\n", false},
	{"greet", "HELO client.example", "250 mx.test\r\n", false},
	{"greet", "helo client.example", "250 mx.test\r\n", false},
	{"greet", "HELO", "501 5.5.4 Syntax: HELO hostname\r\n", false},
	{"rcpt", "EHLO again.example", "250-mx.test\r\n...", false},
	// Commands willi answers in every phase.
	{"greet", "NOOP", "250 2.0.0 Ok\r\n", false},
	{"greet", "noop", "250 2.0.0 Ok\r\n", false},
	{"greet", "NOOP ", "250 2.0.0 Ok\r\n", false},
	{"greet", "NOOP anything at all", "250 2.0.0 Ok\r\n", false},
	{"rcpt", "NOOP", "250 2.0.0 Ok\r\n", false},
	{"greet", "RSET", "250 2.0.0 Ok\r\n", false},
	{"greet", "RSET ", "250 2.0.0 Ok\r\n", false},
	{"greet", "RSET x", "501 5.5.4 Syntax: RSET\r\n", false},
	{"rcpt", "RSET", "250 2.0.0 Ok\r\n", false},
	{"greet", "HELP", "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT\r\n", false},
	{"greet", "HELP DATA", "214 2.0.0 ...", false},
	{"ready", "VRFY alice", "252 2.5.2 ...", false},
	{"ready", "VRFY <alice@example.org>", "252 2.5.2 ...", false},
	{"ready", "VRFY", "501 5.5.4 Syntax: VRFY address\r\n", false},
	{"ready", "EXPN staff", "502 5.5.1 Error: EXPN not implemented\r\n", false},
	{"greet", "QUIT", "221 2.0.0 Bye\r\n", true},
	{"greet", "quit", "221 2.0.0 Bye\r\n", true},
	{"greet", "QUIT ", "221 2.0.0 Bye\r\n", true},
	{"rcpt", "QUIT", "221 2.0.0 Bye\r\n", true},
	{"greet", "QUIT now", "501 5.5.4 Syntax: QUIT\r\n", false},
	// Refused, never forwarded.
	{"ready", "AUTH PLAIN AGFsaWNlAHNlY3JldA==", "502 5.5.1 Error: authentication not enabled\r\n", false},
	{"ready", "auth login", "502 5.5.1 Error: authentication not enabled\r\n", false},
	{"ready", "XCLIENT ADDR=127.0.0.1 NAME=localhost", "550 5.7.0 Error: insufficient authorization\r\n", false},
	{"rcpt", "XCLIENT ADDR=127.0.0.1", "550 5.7.0 Error: insufficient authorization\r\n", false},
	{"ready", "XFORWARD ADDR=127.0.0.1", "550 5.7.0 Error: insufficient authorization\r\n", false},
	{"ready", "STARTTLS", "502 5.5.1 Error: command not implemented\r\n", false},
	{"ready", "starttls", "502 5.5.1 Error: command not implemented\r\n", false},
	{"mail", "STARTTLS", "503 5.5.1 Error: MAIL transaction in progress\r\n", false},
	{"ready", "BDAT 10 LAST", "521 5.5.1 Error: BDAT without CHUNKING, closing connection\r\n", true},
	{"rcpt", "BDAT 0 LAST", "521 5.5.1 Error: BDAT without CHUNKING, closing connection\r\n", true},
	{"ready", "TURN", "502 5.5.1 Error: command not implemented\r\n", false},
	{"ready", "ETRN example.org", "502 5.5.1 Error: command not implemented\r\n", false},
	// Unknown verbs, and known ones spelled otherwise.
	{"ready", "FROB", "500 5.5.2 Error: command not recognized\r\n", false},
	{"ready", "", "500 5.5.2 Error: command not recognized\r\n", false},
	{"ready", "NOOPX", "500 5.5.2 Error: command not recognized\r\n", false},
	{"ready", "NOO", "500 5.5.2 Error: command not recognized\r\n", false},
	{"ready", "MAIL\tFROM:<a@example.net>", "500 5.5.2 Error: command not recognized\r\n", false},
	{"ready", "MAIL:FROM:<a@example.net>", "500 5.5.2 Error: command not recognized\r\n", false},
	{"ready", "MA\u0131L FROM:<a@example.net>", "500 5.5.2 Error: command not recognized\r\n", false}, // dotless i
	{"ready", "R\u017fET", "500 5.5.2 Error: command not recognized\r\n", false},                      // long s
	{"ready", "QU\u0131T", "500 5.5.2 Error: command not recognized\r\n", false},                      // dotless i
	{"ready", "ma\u0131l FROM:<a@example.net>", "500 5.5.2 Error: command not recognized\r\n", false}, // dotless i
	{"ready", "\u212aEHLO x", "", true},                                                               // not a letter: not SMTP
	{"ready", "MAIL\u00a0FROM:<a@example.net>", "500 5.5.2 Error: command not recognized\r\n", false}, // no-break space
	// NUL, control octets, bare CR and LF, length.
	{"ready", "NOOP\x00", "500 5.5.2 Error: bad characters in command\r\n", false},
	{"ready", "MAIL FROM:<a@example.net>\x00RCPT TO:<b@example.org>", "500 5.5.2 Error: bad characters in command\r\n", false},
	{"ready", "MAIL FROM:<a@example.net>\rRCPT TO:<b@example.org>", "500 5.5.2 Error: bad characters in command\r\n", false},
	{"ready", "NOOP \x1b[31m", "500 5.5.2 Error: bad characters in command\r\n", false},
	{"ready", "NOOP " + strings.Repeat("x", 505), "250 2.0.0 Ok\r\n", false},
	{"ready", "NOOP " + strings.Repeat("x", 506), "500 5.5.2 Error: line too long\r\n", false},
	{"ready", "NOOP " + strings.Repeat("x", 50000), "500 5.5.2 Error: line too long\r\n", false},
	// Spacing and case of arguments.
	{"ready", "MAIL FROM:<a@example.net>", "250 2.1.0 Ok\r\n", false},
	{"ready", "mail from:<a@example.net>", "250 2.1.0 Ok\r\n", false},
	{"ready", "MAIL  FROM:<a@example.net>", "250 2.1.0 Ok\r\n", false},
	{"ready", "MAIL FROM: <a@example.net>", "250 2.1.0 Ok\r\n", false},
	{"ready", "MAIL FROM:<a@example.net> ", "250 2.1.0 Ok\r\n", false},
	{"ready", "MAIL FROM :<a@example.net>", "501 5.5.4 Syntax: MAIL FROM:<address>\r\n", false},
	{"ready", "MAIL FROM:a@example.net", "501 5.5.4 Syntax: MAIL FROM:<address>\r\n", false},
	{"ready", "MAIL", "501 5.5.4 Syntax: MAIL FROM:<address>\r\n", false},
	{"ready", "MAIL TO:<a@example.net>", "501 5.5.4 Syntax: MAIL FROM:<address>\r\n", false},
	{"mail", "RCPT TO:<b@example.org>", "250 2.1.5 Ok\r\n", false},
	{"mail", "rcpt to:<b@example.org>", "250 2.1.5 Ok\r\n", false},
	{"mail", "RCPT  TO: <b@example.org>", "250 2.1.5 Ok\r\n", false},
	{"mail", "RCPT FROM:<b@example.org>", "501 5.5.4 Syntax: RCPT TO:<address>\r\n", false},
	{"mail", "RCPT TO:<b@example.org> NOTIFY=NEVER", "555 5.5.4 Error: unsupported RCPT parameter NOTIFY\r\n", false},
	{"rcpt", "DATA", "354 End data with <CR><LF>.<CR><LF>\r\n", false},
	{"rcpt", "data", "354 End data with <CR><LF>.<CR><LF>\r\n", false},
	{"rcpt", "DATA ", "354 End data with <CR><LF>.<CR><LF>\r\n", false},
	{"rcpt", "DATA x", "501 5.5.4 Syntax: DATA\r\n", false},
	// Out of sequence.
	{"greet", "MAIL FROM:<a@example.net>", "503 5.5.1 Error: send HELO/EHLO first\r\n", false},
	{"greet", "MAIL", "503 5.5.1 Error: send HELO/EHLO first\r\n", false},
	{"greet", "RCPT TO:<b@example.org>", "503 5.5.1 Error: need MAIL command\r\n", false},
	{"greet", "DATA", "503 5.5.1 Error: need MAIL command\r\n", false},
	{"ready", "RCPT TO:<b@example.org>", "503 5.5.1 Error: need MAIL command\r\n", false},
	{"ready", "DATA", "503 5.5.1 Error: need MAIL command\r\n", false},
	{"mail", "DATA", "503 5.5.1 Error: need RCPT command\r\n", false},
	{"mail", "MAIL FROM:<a@example.net>", "503 5.5.1 Error: nested MAIL command\r\n", false},
	{"rcpt", "MAIL FROM:<a@example.net>", "503 5.5.1 Error: nested MAIL command\r\n", false},
}

// httpVerbs end the session in every phase.
var httpVerbs = []string{"GET / HTTP/1.1", "POST /cgi-bin/x HTTP/1.0", "HEAD / HTTP/1.1", "PUT /x HTTP/1.1",
	"DELETE /x HTTP/1.1", "CONNECT mx.example:25 HTTP/1.1", "OPTIONS * HTTP/1.1", "TRACE / HTTP/1.1",
	"PATCH /x HTTP/1.1", "get / HTTP/1.1", "GET", "GET /"}

// toPhase drives a fresh session to phase.
func toPhase(fs *fzSession, phase string) {
	fs.t.Helper()
	switch phase {
	case "greet":
	case "ready":
		fs.expect("EHLO client.example", "250-")
	case "mail":
		fs.expect("EHLO client.example", "250-")
		fs.expect("MAIL FROM:<a@example.net>", "250 ")
	case "rcpt":
		fzToRcpt(fs)
	default:
		fs.t.Fatalf("no phase %q", phase)
	}
}

func TestCommandReplies(t *testing.T) {
	cases := commandCases
	for _, phase := range []string{"greet", "ready", "mail", "rcpt"} {
		for _, v := range httpVerbs {
			cases = append(cases, struct {
				phase, line, want string
				close             bool
			}{phase, v, "421 4.7.0 Error: this is an SMTP server, not HTTP\r\n", true})
		}
	}
	for _, tc := range cases {
		name := tc.phase + " " + strconvQuote(tc.line, 40)
		fs := startFzSession(t, fzOptions{})
		toPhase(fs, tc.phase)
		got := fs.cmd(tc.line)
		if want, ok := strings.CutSuffix(tc.want, "..."); ok && !strings.HasPrefix(got, want) || !ok && got != tc.want {
			fs.fatalf("%s: got %q, want %q", name, got, tc.want)
		}
		if tc.close {
			if r := fs.reply(); r != "" || !fs.closed {
				fs.fatalf("%s: connection not closed; got %q", name, r)
			}
			fs.finish("")
			continue
		}
		// The session goes on.
		if tc.want == "354 End data with <CR><LF>.<CR><LF>\r\n" {
			fs.expect(".", "250 2.0.0 Ok: queued as Q1")
		}
		fs.expect("NOOP", "250 2.0.0 Ok")
		if out := fs.finish("QUIT\r\n"); out != "221 2.0.0 Bye\r\n" {
			fs.fatalf("%s: QUIT got %q", name, out)
		}
	}
}

// TestCommandErrorLimit: max_errors consecutive errors end the session
// with 421; a good command in between starts the count again.
func TestCommandErrorLimit(t *testing.T) {
	fs := startFzSession(t, fzOptions{})
	fs.expect("FROB", "500 ")
	fs.expect("MAIL", "503 ")
	fs.expect("NOOP", "250 ")
	fs.expect("NOOP\x00", "500 ")
	fs.expect("RCPT TO:<a@b.example>", "503 ")
	fs.send("XYZZY\r\n")
	if r := fs.reply(); r != "500 5.5.2 Error: command not recognized\r\n" {
		fs.fatalf("got %q", r)
	}
	if r := fs.reply(); r != "421 4.7.0 Error: too many errors, closing connection\r\n" {
		fs.fatalf("got %q", r)
	}
	fs.finish("NOOP\r\n")

	// Pipelined: the replies come in order and nothing after the 421.
	fs = startFzSession(t, fzOptions{})
	out := fs.finish("A\r\nB\r\nC\r\nNOOP\r\n")
	if want := strings.Repeat("500 5.5.2 Error: command not recognized\r\n", 3) + "421 4.7.0 Error: too many errors, closing connection\r\n"; out != want {
		fs.fatalf("got %q, want %q", out, want)
	}
}

// FuzzCommand: whatever the octets, readCommand yields only lines of at
// most 510 octets without control octets other than tab, each taken whole
// from the input; and dispatch answers each with a well-formed reply,
// recognising only the verbs of the table, in ASCII.
func FuzzCommand(f *testing.F) {
	for _, tc := range commandCases {
		f.Add([]byte(tc.line+"\r\n"), tc.phase != "greet")
	}
	for _, v := range httpVerbs {
		f.Add([]byte(v+"\r\nHost: x\r\n\r\n"), false)
	}
	for _, s := range []string{"NOOP\nNOOP\r\n", "NO\x00OP\r\n", "\x16\x03\x01", strings.Repeat("x", 600) + "\r\nQUIT\r\n",
		"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", "ehlo x\r\nmail from:<>\r\nrcpt to:<postmaster>\r\n"} {
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, in []byte, greeted bool) {
		s := memSession(t, in, greeted)
		consumed := 0
		for !s.closing {
			line, r, err := s.readCommand()
			if err != nil || s.closing {
				break
			}
			now := len(in) - s.r.Buffered() - s.conn.(*memConn).r.Len()
			read := in[consumed:now]
			consumed = now
			if r != nil {
				if r != replyLineTooLong && r != replyBadChars && r != replyBareLF {
					t.Fatalf("%q: refused with %v", read, r)
				}
				r = s.countError(r)
			} else {
				if string(read) != line+"\r\n" {
					t.Fatalf("line %q from %q", line, read)
				}
				if len(line) > 510 {
					t.Fatalf("line of %d octets", len(line))
				}
				for _, c := range []byte(line) {
					if c < 0x20 && c != '\t' || c == 0x7f {
						t.Fatalf("line %q has octet %#x", line, c)
					}
				}
				errs := s.errors
				r = s.dispatch(line)
				verb, _, _ := strings.Cut(line, " ")
				header := len(verb) > 1 && verb[len(verb)-1] == ':' // a header line: answered as HTTP
				if _, known := commands[asciiUpper(verb)]; !known && r.Code != 500 && !(r.Code == 421 && errs+1 >= s.cfg.MaxErrors) &&
					!(header && r == replyHTTP) {
					t.Fatalf("unknown verb %q answered %v", verb, r)
				}
			}
			if r.Code == 250 && r.Text[0] == "mx.test" {
				checkReplyLines(t, string(read), r, false) // EHLO and HELO: no enhanced code
			} else {
				checkReplyFormat(t, string(read), r)
			}
			if r.closes() {
				break
			}
		}
	})
}

// asciiUpper upper-cases ASCII letters only, as SMTP verbs are compared.
func asciiUpper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'a' && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}
