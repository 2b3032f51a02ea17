package main

import (
	"strings"
	"testing"
)

// xtext (RFC 3461 §4) as XCLIENT uses it (Postfix XCLIENT_README): every
// value willi forwards is encoded so that it stays one attribute value.

func TestXtextEncode(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"mx.example.org", "mx.example.org"},
		{"[UNAVAILABLE]", "[UNAVAILABLE]"},
		{"IPV6:2001:db8::1", "IPV6:2001:db8::1"},
		{"a b", "a+20b"},
		{"a\tb", "a+09b"},
		{"a+b", "a+2Bb"},
		{"a=b", "a+3Db"},
		{"ADDR=127.0.0.1", "ADDR+3D127.0.0.1"},
		{"x ADDR=127.0.0.1 NAME=trusted", "x+20ADDR+3D127.0.0.1+20NAME+3Dtrusted"},
		{"\r\nMAIL FROM:<a@b>", "+0D+0AMAIL+20FROM:<a@b>"},
		{"\x00", "+00"},
		{"\x7f", "+7F"},
		{"\x80\xff", "+80+FF"},
		{"ü", "+C3+BC"},
		{"!~", "!~"},
		{"++", "+2B+2B"},
	}
	for _, tc := range tests {
		got := xtextEncode(tc.in)
		if got != tc.want {
			t.Errorf("xtextEncode(%q) = %q, want %q", tc.in, got, tc.want)
		}
		back, err := xtextDecode(got)
		if err != nil || back != tc.in {
			t.Errorf("xtextDecode(%q) = %q, %v", got, back, err)
		}
	}
}

func TestXtextDecode(t *testing.T) {
	tests := []struct {
		in, want string
		bad      bool
	}{
		{in: "", want: ""},
		{in: "abc", want: "abc"},
		{in: "+41", want: "A"},
		{in: "a+2Bb", want: "a+b"},
		{in: "+00+FF", want: "\x00\xff"},
		{in: "+", bad: true},
		{in: "+4", bad: true},
		{in: "a+", bad: true},
		{in: "+2b", bad: true}, // hexchar is upper case
		{in: "+a0", bad: true},
		{in: "+G0", bad: true},
		{in: "+-1", bad: true},
		{in: "++12", bad: true},
		{in: "+ 1", bad: true},
		{in: "+0x", bad: true},
		{in: "+_1", bad: true},
		{in: "a=b", bad: true},
		{in: "a b", bad: true},
		{in: "a\tb", bad: true},
		{in: "a\x00", bad: true},
		{in: "\x7f", bad: true},
		{in: "\xc3\xbc", bad: true},
	}
	for _, tc := range tests {
		got, err := xtextDecode(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("xtextDecode(%q) = %q, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("xtextDecode(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// TestXtextAllOctets: each octet alone and between letters.
func TestXtextAllOctets(t *testing.T) {
	for c := 0; c < 256; c++ {
		for _, s := range []string{string([]byte{byte(c)}), "a" + string([]byte{byte(c)}) + "b"} {
			enc := xtextEncode(s)
			checkXtext(t, s, enc)
		}
	}
}

// checkXtext: enc is xtext made only of xchar and upper-case hexchar, with
// no space, "=" or control octet that could end the attribute or the line,
// and decodes back to s.
func checkXtext(t *testing.T, s, enc string) {
	t.Helper()
	for i := 0; i < len(enc); i++ {
		c := enc[i]
		if c < 33 || c > 126 || c == '=' {
			t.Fatalf("xtextEncode(%q) = %q: octet %#x", s, enc, c)
		}
		if c == '+' {
			if i+2 >= len(enc) || !strings.ContainsRune("0123456789ABCDEF", rune(enc[i+1])) || !strings.ContainsRune("0123456789ABCDEF", rune(enc[i+2])) {
				t.Fatalf("xtextEncode(%q) = %q: bad hexchar at %d", s, enc, i)
			}
			i += 2
		}
	}
	if len(enc) > 3*len(s) {
		t.Fatalf("xtextEncode(%q) = %q: too long", s, enc)
	}
	back, err := xtextDecode(enc)
	if err != nil || back != s {
		t.Fatalf("xtextDecode(xtextEncode(%q)) = %q, %v", s, back, err)
	}
}

// TestXCLIENTCommands: the attributes as willi builds them are one value
// each, whatever the client's HELO, and the commands fit in 512 octets.
func TestXCLIENTCommands(t *testing.T) {
	offered := map[string]bool{"HELO": true, "PROTO": true, "PORT": true, "NAME": true, "ADDR": true}
	for _, helo := range []string{
		"client.example.org", "a b", "x ADDR=127.0.0.1", "x\tNAME=localhost", "+3D", "[127.0.0.1]",
		strings.Repeat("h", 85), strings.Repeat("h", 86), strings.Repeat("=", 85), strings.Repeat("=", 86), strings.Repeat("é", 200),
	} {
		c := clientFacts{helo: helo, esmtp: true, port: 4321, ip: []byte{192, 0, 2, 1},
			name: func() string { return "client.example.org" }}
		attrs := c.xclientAttrs(offered)
		seen := map[string]string{}
		for _, a := range attrs {
			k, v, ok := strings.Cut(a, "=")
			if !ok || !offered[k] || seen[k] != "" {
				t.Fatalf("HELO %q: attribute %q", helo, a)
			}
			if len(v) > maxXCLIENTValue {
				t.Fatalf("HELO %q: value of %d octets", helo, len(v))
			}
			dec, err := xtextDecode(v)
			if err != nil {
				t.Fatalf("HELO %q: %q: %v", helo, a, err)
			}
			seen[k] = dec
		}
		wantHelo := helo
		if len(xtextEncode(helo)) > maxXCLIENTValue {
			wantHelo = nameUnavailable
		}
		if seen["HELO"] != wantHelo || seen["ADDR"] != "192.0.2.1" || seen["NAME"] != "client.example.org" ||
			seen["PORT"] != "4321" || seen["PROTO"] != "ESMTP" {
			t.Fatalf("HELO %q: attributes %q", helo, seen)
		}
		cmds := xclientCommands(attrs)
		if len(cmds) == 0 {
			t.Fatalf("HELO %q: no command", helo)
		}
		for _, c := range cmds {
			if len(c)+2 > 512 || !strings.HasPrefix(c, "XCLIENT ") || strings.ContainsAny(c, "\r\n\x00") {
				t.Fatalf("HELO %q: command %q", helo, c)
			}
		}
		last := cmds[len(cmds)-1]
		if !strings.Contains(last, " NAME=") || !strings.Contains(last, " ADDR=") || !strings.Contains(last, " PORT=") {
			t.Fatalf("HELO %q: PORT, NAME and ADDR not in the last command %q", helo, last)
		}
	}
}

// FuzzXtext: encoding round-trips and yields only xtext; decoding accepts
// only xtext, and what it accepts encodes to something that decodes to the
// same value.
func FuzzXtext(f *testing.F) {
	for _, s := range []string{"", "abc", "a b", "a+b=c", "+2B", "+2b", "+", "x ADDR=1.2.3.4", "\x00\r\n\xff", "[UNAVAILABLE]", "IPV6:::1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		checkXtext(t, s, xtextEncode(s))
		dec, err := xtextDecode(s)
		if err != nil {
			return
		}
		for i := 0; i < len(s); i++ {
			if c := s[i]; c < 33 || c > 126 || c == '=' {
				t.Fatalf("xtextDecode accepted %q", s)
			}
		}
		if again, err := xtextDecode(xtextEncode(dec)); err != nil || again != dec {
			t.Fatalf("%q: decoded %q, re-encoded and decoded %q, %v", s, dec, again, err)
		}
		if len(dec) > len(s) {
			t.Fatalf("%q: decoded to longer %q", s, dec)
		}
	})
}
