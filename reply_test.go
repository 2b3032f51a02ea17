package main

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// The upstream reply parser (readReply, upstream.go) and the formatting of
// every reply willi sends (Reply.appendTo, reply.go): table tests and
// FuzzReply.

var replyCases = []struct {
	name string
	in   string
	code int
	enh  string
	text []string
	bad  bool // errUpstreamProtocol
	eof  bool // the connection ends inside the reply
	rest string
}{
	{name: "one line", in: "250 2.0.0 Ok\r\n", code: 250, enh: "2.0.0", text: []string{"Ok"}},
	{name: "no enhanced code", in: "250 Ok\r\n", code: 250, enh: "2.0.0", text: []string{"Ok"}},
	{name: "no enhanced code, 5xx", in: "554 go away\r\n", code: 554, enh: "5.0.0", text: []string{"go away"}},
	{name: "3xx keeps none", in: "354 End data with <CR><LF>.<CR><LF>\r\n", code: 354, text: []string{"End data with <CR><LF>.<CR><LF>"}},
	{name: "code only", in: "250\r\n", code: 250, enh: "2.0.0", text: []string{""}},
	{name: "code and space", in: "250 \r\n", code: 250, enh: "2.0.0", text: []string{""}},
	{name: "enhanced code only", in: "550 5.1.1\r\n", code: 550, enh: "5.1.1", text: []string{""}},
	{name: "three-digit parts", in: "550 5.123.456 x\r\n", code: 550, enh: "5.123.456", text: []string{"x"}},
	{name: "multi-line", in: "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n", code: 250, enh: "2.0.0",
		text: []string{"mx.example", "PIPELINING", "SIZE 100"}},
	{name: "multi-line enhanced", in: "550-5.1.1 no such user\r\n550-5.1.1 here\r\n550 5.1.1 at all\r\n", code: 550, enh: "5.1.1",
		text: []string{"no such user", "here", "at all"}},
	{name: "multi-line, enhanced codes differ", in: "550-5.1.1 a\r\n550 5.1.2 b\r\n", code: 550, enh: "5.0.0",
		text: []string{"5.1.1 a", "5.1.2 b"}},
	{name: "multi-line, enhanced code on one line", in: "550-5.1.1 a\r\n550 b\r\n", code: 550, enh: "5.0.0",
		text: []string{"5.1.1 a", "b"}},
	{name: "enhanced class differs", in: "550 4.1.1 x\r\n", code: 550, enh: "5.0.0", text: []string{"4.1.1 x"}},
	{name: "not an enhanced code", in: "250 2.0 x\r\n", code: 250, enh: "2.0.0", text: []string{"2.0 x"}},
	{name: "enhanced part too long", in: "250 2.0000.0 x\r\n", code: 250, enh: "2.0.0", text: []string{"2.0000.0 x"}},
	{name: "enhanced part empty", in: "250 2..0 x\r\n", code: 250, enh: "2.0.0", text: []string{"2..0 x"}},
	{name: "enhanced letters", in: "250 2.a.0 x\r\n", code: 250, enh: "2.0.0", text: []string{"2.a.0 x"}},
	{name: "continuation without text", in: "250-\r\n250 x\r\n", code: 250, enh: "2.0.0", text: []string{"", "x"}},
	{name: "bare LF line end", in: "250 Ok\n", code: 250, enh: "2.0.0", text: []string{"Ok"}},
	{name: "mixed line ends", in: "250-a\n250 b\r\n", code: 250, enh: "2.0.0", text: []string{"a", "b"}},
	{name: "bare CR kept in text", in: "250 a\rb\r\n", code: 250, enh: "2.0.0", text: []string{"a\rb"}},
	{name: "control and 8-bit text kept", in: "250 \x1b[1m\xff\x00\r\n", code: 250, enh: "2.0.0", text: []string{"\x1b[1m\xff\x00"}},
	{name: "pipelined next reply left", in: "250 a\r\n354 go\r\n", code: 250, enh: "2.0.0", text: []string{"a"}, rest: "354 go\r\n"},
	{name: "line of 512 octets", in: "250 " + strings.Repeat("x", 506) + "\r\n", code: 250, enh: "2.0.0", text: []string{strings.Repeat("x", 506)}},
	{name: "100 lines", in: strings.Repeat("250-x\r\n", 99) + "250 y\r\n", code: 250, enh: "2.0.0",
		text: append(strings.Split(strings.Repeat("x", 99), ""), "y")},

	{name: "line of 513 octets", in: "250 " + strings.Repeat("x", 507) + "\r\n", bad: true},
	{name: "huge line", in: "250 " + strings.Repeat("x", 100000) + "\r\n", bad: true},
	{name: "101 lines", in: strings.Repeat("250-x\r\n", 100) + "250 y\r\n", bad: true},
	{name: "endless continuation", in: strings.Repeat("250-x\r\n", 1000), bad: true},
	{name: "codes differ", in: "250-a\r\n251 b\r\n", bad: true},
	{name: "codes differ in class", in: "250-a\r\n550 b\r\n", bad: true},
	{name: "first digit 1", in: "199 x\r\n", bad: true},
	{name: "first digit 6", in: "600 x\r\n", bad: true},
	{name: "first digit 0", in: "099 x\r\n", bad: true},
	{name: "two digits", in: "25 x\r\n", bad: true},
	{name: "four digits", in: "2500 x\r\n", bad: true},
	{name: "letter in code", in: "2x0 x\r\n", bad: true},
	{name: "tab separator", in: "250\tx\r\n", bad: true},
	{name: "other separator", in: "250_x\r\n", bad: true},
	{name: "empty line", in: "\r\n", bad: true},
	{name: "leading space", in: " 250 x\r\n", bad: true},
	{name: "garbage", in: "HTTP/1.1 200 OK\r\n", bad: true},
	{name: "binary", in: "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n", bad: true},
	{name: "garbage continuation", in: "250-a\r\nxyz\r\n", bad: true},
	{name: "NUL in code", in: "25\x00 x\r\n", bad: true},

	{name: "empty stream", in: "", eof: true},
	{name: "no line end", in: "250 Ok", eof: true},
	{name: "cut after continuation", in: "250-a\r\n", eof: true},
	{name: "cut inside continuation", in: "250-a\r\n250", eof: true},
}

func TestReadReply(t *testing.T) {
	readers := map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"one-byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
		"data-err": iotest.DataErrReader,
	}
	for _, tc := range replyCases {
		for rname, wrap := range readers {
			br := bufio.NewReaderSize(wrap(strings.NewReader(tc.in)), 4096)
			r, err := readReply(br, nil)
			where := tc.name + "/" + rname
			switch {
			case tc.bad:
				if !errors.Is(err, errUpstreamProtocol) {
					t.Fatalf("%s: got %v, %v; want a protocol error", where, r, err)
				}
				continue
			case tc.eof:
				if err == nil || errors.Is(err, errUpstreamProtocol) {
					t.Fatalf("%s: got %v, %v; want a connection error", where, r, err)
				}
				continue
			case err != nil:
				t.Fatalf("%s: %v", where, err)
			}
			if r.Code != tc.code || r.Enh != tc.enh || strings.Join(r.Text, "\n") != strings.Join(tc.text, "\n") || len(r.Text) != len(tc.text) {
				t.Fatalf("%s: got %d %q %q, want %d %q %q", where, r.Code, r.Enh, r.Text, tc.code, tc.enh, tc.text)
			}
			rest, _ := io.ReadAll(br)
			if string(rest) != tc.rest {
				t.Fatalf("%s: left %q, want %q", where, rest, tc.rest)
			}
			checkReplyFormat(t, where, r)
		}
	}
}

// checkReplyFormat checks what the client would see of r (security rules
// G5 and 21): every line CODE, "-" or " ", printable US-ASCII, CRLF, at
// most 512 octets, "-" on all lines but the last, an enhanced code on
// 2xx/4xx/5xx.
func checkReplyFormat(t *testing.T, where string, r *Reply) {
	t.Helper()
	checkReplyLines(t, where, r, true)
}

func checkReplyLines(t *testing.T, where string, r *Reply, enh bool) {
	t.Helper()
	out := string(r.appendTo(nil))
	if !strings.HasSuffix(out, "\r\n") {
		t.Fatalf("%s: reply %q does not end in CRLF", where, out)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\r\n"), "\r\n")
	for i, l := range lines {
		if len(l)+2 > 512 {
			t.Fatalf("%s: reply line of %d octets", where, len(l)+2)
		}
		if !replyFormat.MatchString(l) || len(l) < 4 {
			t.Fatalf("%s: malformed reply line %q", where, l)
		}
		if want := byte(' '); i < len(lines)-1 && l[3] != '-' || i == len(lines)-1 && l[3] != want {
			t.Fatalf("%s: bad separator in %q", where, l)
		}
		if l[:3] != lines[0][:3] {
			t.Fatalf("%s: codes differ within the reply: %q", where, out)
		}
		if c := l[0]; enh && (c == '2' || c == '4' || c == '5') {
			e, _, _ := strings.Cut(l[4:], " ")
			if !isEnhanced(e) || e[0] != c {
				t.Fatalf("%s: no enhanced code in %q", where, l)
			}
		}
	}
}

func TestReplyAppendTo(t *testing.T) {
	tests := []struct {
		r    *Reply
		want string
	}{
		{reply(250, "2.0.0", "Ok"), "250 2.0.0 Ok\r\n"},
		{&Reply{Code: 354, Text: []string{"go ahead"}}, "354 go ahead\r\n"},
		{&Reply{Code: 250, Enh: "2.0.0"}, "250 2.0.0\r\n"},
		{&Reply{Code: 250, Enh: "2.0.0", Text: []string{"a", "", "c"}}, "250-2.0.0 a\r\n250-2.0.0\r\n250 2.0.0 c\r\n"},
		{&Reply{Code: 550, Enh: "5.1.1", Text: []string{"a\r\nb\x00c\x1b\xff\x7f"}}, "550 5.1.1 a??b?c???\r\n"},
		{&Reply{Code: 550, Enh: "5.1.1", Text: []string{"250 2.0.0 Ok\r\n250 2.0.0 Ok"}}, "550 5.1.1 250 2.0.0 Ok??250 2.0.0 Ok\r\n"},
		{&Reply{Code: 250, Enh: "2.0.0", Text: []string{strings.Repeat("x", 600)}}, "250 2.0.0 " + strings.Repeat("x", 500) + "\r\n"},
	}
	for _, tc := range tests {
		if got := string(tc.r.appendTo(nil)); got != tc.want {
			t.Errorf("%v: got %q, want %q", tc.r, got, tc.want)
		}
		checkReplyFormat(t, tc.want, tc.r)
	}
}

func TestReplyWithCode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		code int
		want string
	}{
		{"421 4.3.2 shutting down\r\n", 451, "451 4.3.2 shutting down\r\n"},
		{"421 shutting down\r\n", 451, "451 4.0.0 shutting down\r\n"},
		{"552 5.2.2 mailbox full\r\n", 452, "452 4.2.2 mailbox full\r\n"},
		{"552-5.3.4 a\r\n552 5.3.4 b\r\n", 452, "452-4.3.4 a\r\n452 4.3.4 b\r\n"},
	} {
		r, err := readReply(bufio.NewReader(strings.NewReader(tc.in)), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(r.withCode(tc.code).appendTo(nil)); got != tc.want {
			t.Errorf("%q as %d: got %q, want %q", tc.in, tc.code, got, tc.want)
		}
		if r.Code == tc.code {
			t.Errorf("%q: withCode changed the original", tc.in)
		}
	}
}

// FuzzReply: whatever an upstream sends, readReply returns a reply that
// fits the limits, or an error; what the client would be shown of it is
// well-formed; the octets it consumed are exactly its lines.
func FuzzReply(f *testing.F) {
	for _, tc := range replyCases {
		if len(tc.in) < 2000 {
			f.Add([]byte(tc.in))
		}
	}
	f.Add([]byte("250-mx\r\n250-XCLIENT NAME ADDR\r\n250 STARTTLS\r\n220 2.0.0 go\r\n"))
	f.Add([]byte("421-4.3.2 bye\n421 4.3.2 \x00\xff\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(strings.NewReader(string(in)), 4096)
		r, err := readReply(br, nil)
		if err != nil {
			return
		}
		if r.Code < 200 || r.Code > 599 {
			t.Fatalf("%q: code %d", in, r.Code)
		}
		if len(r.Text) == 0 || len(r.Text) > maxUpstreamLines {
			t.Fatalf("%q: %d lines", in, len(r.Text))
		}
		consumed := len(in) - br.Buffered()
		lines := strings.SplitAfter(string(in[:consumed]), "\n")
		if lines[len(lines)-1] == "" {
			lines = lines[:len(lines)-1]
		}
		if len(lines) != len(r.Text) {
			t.Fatalf("%q: %d lines consumed for %d reply lines", in, len(lines), len(r.Text))
		}
		for i, l := range lines {
			if len(l) > maxUpstreamLine || !strings.HasSuffix(l, "\n") || l[:3] != lines[0][:3] {
				t.Fatalf("%q: line %q accepted", in, l)
			}
			if !strings.HasSuffix(strings.TrimSuffix(strings.TrimSuffix(l, "\n"), "\r"), r.Text[i]) {
				t.Fatalf("%q: text %q is not from line %q", in, r.Text[i], l)
			}
		}
		checkReplyFormat(t, string(in), r)
		if r.Code/100 != 3 { // relay recodes only 421 and 552
			checkReplyFormat(t, string(in), r.withCode(451))
			checkReplyFormat(t, string(in), r.withCode(452))
		}
	})
}
