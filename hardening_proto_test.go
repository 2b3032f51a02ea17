package main

import (
	"fmt"
	"strings"
	"testing"
)

// Classes 3-5: spoofing of XCLIENT, XFORWARD, AUTH and PROXY by the client
// and injection through every value willi forwards; open relay and
// addresses; protocol abuse.

const (
	hXC        = "XCLIENT NAME ADDR PROTO HELO PORT"
	hNoAuthz   = "550 5.7.0 Error: insufficient authorization\r\n"
	hNoAuth    = "502 5.5.1 Error: authentication not enabled\r\n"
	hUnknown   = "500 5.5.2 Error: command not recognized\r\n"
	hTooMany   = "421 4.7.0 Error: too many errors, closing connection\r\n"
	hBadChars  = "500 5.5.2 Error: bad characters in command\r\n"
	hLongLine  = "500 5.5.2 Error: line too long\r\n"
	hBareLFCmd = "500 5.5.2 Error: command not terminated by CRLF\r\n"
	hAddrHack  = "553 5.1.3 Error: local part with %, ! or quoting not accepted\r\n"
	hAddrLong  = "501 5.1.3 Error: address too long\r\n"
	hAddrBad   = "501 5.1.3 Error: bad address syntax\r\n"
	hRcptSyn   = "501 5.5.4 Syntax: RCPT TO:<address>\r\n"
	hMailSyn   = "501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
	hParamBad  = "501 5.5.4 Error: bad parameter syntax\r\n"
	hNeedUTF8  = "553 5.6.7 Error: non-ASCII address needs SMTPUTF8\r\n"
	hHTTP      = "421 4.7.0 Error: this is an SMTP server, not HTTP\r\n"
	hBDAT      = "521 5.5.1 Error: BDAT without CHUNKING, closing connection\r\n"
	hNoHelo    = "503 5.5.1 Error: send HELO/EHLO first\r\n"
	hNeedMail  = "503 5.5.1 Error: need MAIL command\r\n"
	hNeedRcpt  = "503 5.5.1 Error: need RCPT command\r\n"
	hNested    = "503 5.5.1 Error: nested MAIL command\r\n"
	hNoValid   = "554 5.5.1 Error: no valid recipients\r\n"
	hTooManyRc = "452 4.5.3 Error: too many recipients\r\n"
	hOtherUp   = "452 4.5.3 Error: too many recipients; send this one in a new transaction\r\n"
)

// hXCLIENT is the XCLIENT willi sends for the standard client with helo
// (xtext-encoded) and proto.
func hXCLIENT(helo, proto string) string {
	return "XCLIENT HELO=" + helo + " PROTO=" + proto + " PORT=4321 NAME=client.example.org ADDR=192.0.2.1\r\n"
}

// TestHardeningSpoofing runs class 3: the client's XCLIENT, XFORWARD, AUTH
// and PROXY in every phase are refused and never forwarded, and no value
// willi forwards (HELO, addresses, parameters) can become another
// attribute or command upstream.
func TestHardeningSpoofing(t *testing.T) {
	xc := upScript{"ext": hXC}
	upXC := hUpEhlo + hXCLIENT("client.example", "ESMTP") + "EHLO client.example\r\n"
	cases := []hcase{
		{name: "XCLIENT before EHLO", up: xc,
			in:  "XCLIENT ADDR=6.6.6.6 NAME=trusted.example\r\n" + hEnvIn + hQuit,
			out: hBanner + hNoAuthz + hEhlo + hMailOK + hRcptOK + hBye, ups: []string{upXC + hUpMail + hUpRcpt + hQuit}},
		{name: "XCLIENT after EHLO, lower case", up: xc,
			in:  hEhloIn + "xclient addr=6.6.6.6\r\n" + hMailIn + hRcptIn + hQuit,
			out: hBanner + hEhlo + hNoAuthz + hMailOK + hRcptOK + hBye, ups: []string{upXC + hUpMail + hUpRcpt + hQuit}},
		{name: "XCLIENT inside a transaction bound to the upstream", up: xc,
			in:  hEnvIn + "XCLIENT ADDR=6.6.6.6\r\nXFORWARD ADDR=6.6.6.6\r\n" + hQuit,
			out: hEnvOut + hNoAuthz + hNoAuthz + hBye, ups: []string{upXC + hUpMail + hUpRcpt + hQuit}},
		{name: "XCLIENT after a message", up: xc,
			in:  hDataIn + "x\r\n.\r\nXCLIENT ADDR=6.6.6.6 LOGIN=admin\r\n" + hMailIn + hRcptIn + hQuit,
			out: hEnvOut + h354 + hQueued(1) + hNoAuthz + hMailOK + hRcptOK + hBye,
			ups: []string{upXC + hUpMail + hUpRcpt + "DATA\r\nx\r\n.\r\n" + hUpMail + hUpRcpt + hQuit}},
		{name: "XFORWARD before and after EHLO", up: xc,
			in:  "XFORWARD NAME=spoofed.example ADDR=6.6.6.6\r\n" + hEhloIn + "XFORWARD HELO=x\r\n" + hMailIn + hRcptIn + hQuit,
			out: hBanner + hNoAuthz + hEhlo + hNoAuthz + hMailOK + hRcptOK + hBye, ups: []string{upXC + hUpMail + hUpRcpt + hQuit}},
		{name: "AUTH PLAIN with an initial response", up: xc,
			in:  hEhloIn + "AUTH PLAIN AGFkbWluAHNlY3JldA==\r\n" + hMailIn + hRcptIn + hQuit,
			out: hBanner + hEhlo + hNoAuth + hMailOK + hRcptOK + hBye, ups: []string{upXC + hUpMail + hUpRcpt + hQuit}},
		{name: "AUTH LOGIN and its continuation lines count as errors",
			in:  hEhloIn + "AUTH LOGIN\r\ndXNlcg==\r\ncGFzcw==\r\n" + hMailIn,
			out: hBanner + hEhlo + hNoAuth + hUnknown + hUnknown + hTooMany},
		{name: "AUTH inside a transaction", up: xc,
			in:  hEnvIn + "AUTH PLAIN AGFkbWluAHNlY3JldA==\r\n" + hQuit,
			out: hEnvOut + hNoAuth + hBye, ups: []string{upXC + hUpMail + hUpRcpt + hQuit}},
		{name: "AUTH= MAIL parameter", in: hEhloIn + "MAIL FROM:<a@example.net> AUTH=<admin@example.org>\r\n" + hQuit,
			out: hBanner + hEhlo + "555 5.5.4 Error: unsupported MAIL parameter AUTH\r\n" + hBye},
		{name: "XCLIENT-like RCPT parameter", in: hEhloIn + hMailIn + "RCPT TO:<b@example.org> XCLIENT=ADDR\r\n" + hQuit,
			out: hBanner + hEhlo + hMailOK + "555 5.5.4 Error: unsupported RCPT parameter XCLIENT\r\n" + hBye},
		{name: "PROXY v1 line after the banner", up: xc,
			in:  "PROXY TCP4 6.6.6.6 192.0.2.10 4444 25\r\n" + hEnvIn + hQuit,
			out: hBanner + hUnknown + hEhlo + hMailOK + hRcptOK + hBye, ups: []string{upXC + hUpMail + hUpRcpt + hQuit}},
		{name: "PROXY v2 signature after the banner",
			in:  "\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\x06\x06\x06\x06\xc0\x00\x02\x0a\x11\x5c\x00\x19",
			out: hBanner + hUnknown + hUnknown},
		{name: "PROXY header towards the upstream names the real client",
			tables: "[[upstream]]\nserver = \"up1.test:25\"\nclient_address = \"proxy-v1\"\n",
			in:     "PROXY TCP4 6.6.6.6 192.0.2.10 4444 25\r\n" + hEnvIn + hQuit,
			out:    hBanner + hUnknown + hEhlo + hMailOK + hRcptOK + hBye,
			ups:    []string{"PROXY TCP4 192.0.2.1 192.0.2.10 4321 25\r\n" + hUpEnv + hQuit}},
		{name: "client_address none: no XCLIENT though offered", up: xc,
			tables: "[[upstream]]\nserver = \"up1.test:25\"\nclient_address = \"none\"\n",
			in:     hEnvIn + hQuit, out: hEnvOut + hBye, ups: []string{hUpEnv + hQuit}},
		{name: "upstream refuses XCLIENT: no MAIL", up: upScript{"ext": hXC, "XCLIENT": "550 5.7.0 not for you\r\n"},
			in:  hEnvIn + hQuit,
			out: hBanner + hEhlo + hMailOK + "451 4.7.0 Error: upstream refused XCLIENT, try again later\r\n" + hBye,
			ups: []string{hUpEhlo + hXCLIENT("client.example", "ESMTP")}},
	}
	// HELO values that try to become XCLIENT attributes or commands: one
	// xtext-encoded HELO= value, and the same name in the EHLO after it.
	for _, h := range []struct{ helo, enc string }{
		{"x ADDR=6.6.6.6", "x+20ADDR+3D6.6.6.6"},
		{"x NAME=trusted.example LOGIN=admin", "x+20NAME+3Dtrusted.example+20LOGIN+3Dadmin"},
		{"a+41=b", "a+2B41+3Db"},
		{"[192.0.2.1]", "[192.0.2.1]"},
		{"x%0d%0aMAIL FROM:<evil@example.com>", "x%0d%0aMAIL+20FROM:<evil@example.com>"},
		{"caf\xc3\xa9.example", "caf+C3+A9.example"},
	} {
		cases = append(cases, hcase{name: "EHLO " + fmt.Sprintf("%q", h.helo), up: xc,
			in:  "EHLO " + h.helo + "\r\n" + hMailIn + hRcptIn + hQuit,
			out: hEnvOut + hBye,
			ups: []string{hUpEhlo + hXCLIENT(h.enc, "ESMTP") + "EHLO " + h.helo + "\r\n" + hUpMail + hUpRcpt + hQuit}})
	}
	// A HELO name that is not valid UTF-8 or holds a tab is refused: it
	// is repeated to the upstream after XCLIENT, which would refuse it.
	for _, helo := range []string{"x\tADDR=6.6.6.6", "x\xc0\x8aMAIL", "caf\xe9.example"} {
		cases = append(cases, hcase{name: "EHLO " + fmt.Sprintf("%q", helo) + " refused", up: xc,
			in:  "EHLO " + helo + "\r\n" + hEhloIn + hMailIn + hRcptIn + hQuit,
			out: hBanner + "501 5.5.2 Error: invalid HELO name\r\n" + hEnvOut[len(hBanner):] + hBye,
			ups: []string{hUpEhlo + hXCLIENT("client.example", "ESMTP") + "EHLO client.example\r\n" + hUpMail + hUpRcpt + hQuit}})
	}
	long := strings.Repeat("h", 300)
	cases = append(cases,
		hcase{name: "EHLO too long for XCLIENT", up: xc, in: "EHLO " + long + "\r\n" + hMailIn + hRcptIn + hQuit,
			out: hEnvOut + hBye, ups: []string{hUpEhlo + hXCLIENT("[UNAVAILABLE]", "ESMTP") + hUpEhlo + hUpMail + hUpRcpt + hQuit}},
		hcase{name: "HELO: PROTO=SMTP, HELO again, no parameters", up: xc,
			in:  "HELO client.example\r\nMAIL FROM:<a@example.net>\r\n" + hRcptIn + hQuit,
			out: hBanner + "250 mx.test\r\n" + hMailOK + hRcptOK + hBye,
			ups: []string{hUpEhlo + hXCLIENT("client.example", "SMTP") + "HELO client.example\r\n" + hUpMail + hUpRcpt + hQuit}},
		hcase{name: "parameters rebuilt from parsed values",
			in:  hEhloIn + "MAIL FROM:<a+b=c@example.net> size=0042 body=8bitmime smtputf8\r\n" + hRcptIn + hQuit,
			out: hBanner + hEhlo + hMailOK + hRcptOK + hBye,
			ups: []string{hUpEhlo + "MAIL FROM:<a+b=c@example.net> SIZE=42 BODY=8BITMIME SMTPUTF8\r\n" + hUpRcpt + hQuit}},
		hcase{name: "parameters the upstream lacks are dropped or refused",
			up: upScript{"EHLO": "250-up.test\r\n250 PIPELINING\r\n"},
			in: hEhloIn + "MAIL FROM:<a@example.net> SIZE=42\r\n" + hRcptIn + "RSET\r\n" +
				"MAIL FROM:<a@example.net> BODY=8BITMIME\r\n" + hRcptIn + "RSET\r\n" +
				"MAIL FROM:<j\xc3\xb6rg@example.net> SMTPUTF8\r\n" + hRcptIn + hQuit,
			out: hBanner + hEhlo + hMailOK + hRcptOK + hOK +
				hMailOK + "554 5.6.3 Error: the upstream for this recipient does not accept 8-bit MIME\r\n" + hOK +
				hMailOK + "553 5.6.7 Error: the upstream for this recipient does not support SMTPUTF8\r\n" + hBye,
			ups: []string{hUpEhlo + hUpMail + hUpRcpt + "RSET\r\n" + hQuit}},
	)
	hRunTable(t, cases)
}

// TestHardeningAddresses runs class 4: only mapped recipients are relayed,
// and the canonical address routed is the one forwarded.
func TestHardeningAddresses(t *testing.T) {
	const routes = "pattern,server\nexample.org,up1.test:25\n.sub.example,up1.test:25\nb@example.com,up1.test:25\n" +
		"[192.0.2.99],up2.test:25\nxn--bcher-kva.example,up1.test:25\n"
	type rc struct {
		name, mail string // "" is MAIL FROM:<a@example.net>
		rcpt       string // the path, between angle brackets
		raw        string // instead: the whole argument after "RCPT TO:"
		reply      string // "" for a relayed 250: then fwd is the RCPT upstream
		fwd        string
		fwdFrom    string // the sender as forwarded, when not as given
		conf       string
	}
	relay := func(a string) string { return fmt.Sprintf(hNoRelay, a) }
	long := func(n int) string { return strings.Repeat("l", n) }
	// A domain of n octets under sub.example (routed by .sub.example).
	domain := func(n int) string {
		d := "sub.example"
		for len(d) < n {
			k := min(63, n-len(d)-1)
			if k < 1 {
				d = "x" + d[1:]
				continue
			}
			d = strings.Repeat("d", k) + "." + d
		}
		return d
	}
	table := []rc{
		{name: "routed", rcpt: "b@example.org", fwd: "b@example.org"},
		{name: "upper-case domain, local part kept", rcpt: "B@EXAMPLE.ORG", fwd: "B@example.org"},
		{name: "trailing dot", rcpt: "b@Example.Org.", fwd: "b@example.org"},
		{name: "two trailing dots", rcpt: "b@example.org..", reply: hAddrBad},
		{name: "space after the colon", raw: " <b@example.org>", fwd: "b@example.org"},
		{name: "source route to a routed domain", rcpt: "@relay.example.com,@x.example:b@example.org", fwd: "b@example.org"},
		{name: "source route to an unrouted domain", rcpt: "@example.org:victim@evil.example", reply: relay("victim@evil.example")},
		{name: "source route without a mailbox", rcpt: "@example.org", reply: hAddrBad},
		{name: "percent hack", rcpt: "victim%evil.example@example.org", reply: hAddrHack},
		{name: "bang path", rcpt: "evil.example!victim@example.org", reply: hAddrHack},
		{name: "quoted @ in the local part", rcpt: `"victim@evil.example"@example.org`, reply: hAddrHack},
		{name: "quoted percent hack", rcpt: `"victim%evil.example"@example.org`, reply: hAddrHack},
		{name: "quoted space", rcpt: `"a b"@example.org`, reply: hAddrHack},
		{name: "quoted but plain", rcpt: `"b"@example.org`, fwd: "b@example.org"},
		{name: "quoted with escapes but plain", rcpt: `"\b"@example.org`, fwd: "b@example.org"},
		{name: "unrouted domain", rcpt: "victim@evil.example", reply: relay("victim@evil.example")},
		{name: "routed domain as a suffix", rcpt: "victim@evilexample.org", reply: relay("victim@evilexample.org")},
		{name: "routed domain as a prefix", rcpt: "victim@example.org.evil.example", reply: relay("victim@example.org.evil.example")},
		{name: "parent domain pattern", rcpt: "b@a.b.sub.example", fwd: "b@a.b.sub.example"},
		{name: "parent pattern is not the domain itself", rcpt: "b@sub.example", reply: relay("b@sub.example")},
		{name: "address pattern only", rcpt: "c@example.com", reply: relay("c@example.com")},
		{name: "address pattern", rcpt: "b@EXAMPLE.com", fwd: "b@example.com"},
		{name: "delimiter off: no stripping", rcpt: "b+tag@example.com", reply: relay("b+tag@example.com")},
		{name: "delimiter on: routed by b@, forwarded whole", rcpt: "b+tag@example.com", fwd: "b+tag@example.com", conf: `recipient_delimiter = "+"`},
		{name: "unmapped address literal", rcpt: "b@[192.0.2.1]", reply: relay("b@[192.0.2.1]")},
		{name: "mapped address literal", rcpt: "b@[192.0.2.99]", fwd: "b@[192.0.2.99]"},
		{name: "IPv6 literal", rcpt: "b@[IPv6:2001:DB8::1]", reply: relay("b@[IPv6:2001:db8::1]")},
		{name: "bad literal", rcpt: "b@[300.1.1.1]", reply: hAddrBad},
		{name: "IDN to A-label", rcpt: "b@bücher.example", fwd: "b@xn--bcher-kva.example"},
		{name: "IDN upper case with trailing dot", rcpt: "b@BÜCHER.Example.", fwd: "b@xn--bcher-kva.example"},
		{name: "invalid UTF-8 domain", rcpt: "b@b\xfccher.example", reply: hAddrBad},
		{name: "non-ASCII local part without SMTPUTF8", rcpt: "jörg@example.org", reply: hNeedUTF8},
		{name: "non-ASCII local part with SMTPUTF8", mail: "MAIL FROM:<a@example.net> SMTPUTF8", rcpt: "jörg@example.org", fwd: "jörg@example.org"},
		{name: "local part of 64", rcpt: long(64) + "@example.org", fwd: long(64) + "@example.org"},
		{name: "local part of 65", rcpt: long(65) + "@example.org", reply: hAddrLong},
		{name: "path of 256", rcpt: "b@" + domain(252), fwd: "b@" + domain(252)},
		{name: "path of 257", rcpt: "b@" + domain(253), reply: hAddrLong},
		{name: "domain of 256", rcpt: "b@" + domain(256), reply: hAddrLong},
		{name: "label of 64", rcpt: "b@" + long(64) + ".sub.example", reply: hAddrBad},
		{name: "postmaster without a domain", rcpt: "Postmaster", reply: relay("postmaster")},
		{name: "empty path", raw: "<>", reply: hAddrBad},
		{name: "no angle brackets", raw: "b@example.org", reply: hRcptSyn},
		{name: "unclosed angle bracket", raw: "<b@example.org", reply: hRcptSyn},
		{name: "two paths", raw: "<b@example.org> <c@evil.example>", reply: hParamBad},
		{name: "unknown RCPT parameter", raw: "<b@example.org> NOTIFY=NEVER", reply: "555 5.5.4 Error: unsupported RCPT parameter NOTIFY\r\n"},
		{name: "malformed RCPT parameter", raw: "<b@example.org> =x", reply: hParamBad},
		{name: "unknown MAIL parameter", mail: "MAIL FROM:<a@example.net> FOO=1", reply: "555 5.5.4 Error: unsupported MAIL parameter FOO\r\n"},
		{name: "bad SIZE", mail: "MAIL FROM:<a@example.net> SIZE=12x", reply: "501 5.5.4 Error: bad SIZE parameter\r\n"},
		{name: "huge SIZE", mail: "MAIL FROM:<a@example.net> SIZE=99999999999999999999999", reply: "501 5.5.4 Error: bad SIZE parameter\r\n"},
		{name: "SIZE over the limit", mail: "MAIL FROM:<a@example.net> SIZE=52428801", reply: hTooBig},
		{name: "SIZE at the limit", mail: "MAIL FROM:<a@example.net> SIZE=52428800", rcpt: "b@example.org", fwd: "b@example.org"},
		{name: "empty SIZE", mail: "MAIL FROM:<a@example.net> SIZE=", reply: hParamBad},
		{name: "BINARYMIME", mail: "MAIL FROM:<a@example.net> BODY=BINARYMIME", reply: "504 5.5.4 Error: BINARYMIME not supported\r\n"},
		{name: "bad BODY", mail: "MAIL FROM:<a@example.net> BODY=9BIT", reply: "501 5.5.4 Error: bad BODY parameter\r\n"},
		{name: "SMTPUTF8 with a value", mail: "MAIL FROM:<a@example.net> SMTPUTF8=yes", reply: "501 5.5.4 Error: SMTPUTF8 takes no value\r\n"},
		{name: "duplicate parameter", mail: "MAIL FROM:<a@example.net> SIZE=1 size=2", reply: "501 5.5.4 Error: duplicate parameter\r\n"},
		{name: "parameter glued to the path", mail: "MAIL FROM:<a@example.net>SIZE=1", reply: hMailSyn},
		// Senders are not routed: % ! and quoting pass to the upstream.
		{name: "percent hack sender", mail: "MAIL FROM:<a%evil.example@example.net>", rcpt: "b@example.org", fwd: "b@example.org",
			fwdFrom: "a%evil.example@example.net"},
		{name: "bang path sender", mail: "MAIL FROM:<evil.example!a@example.net>", rcpt: "b@example.org", fwd: "b@example.org",
			fwdFrom: "evil.example!a@example.net"},
		{name: "quoted sender", mail: "MAIL FROM:<\"john smith\"@example.net>", rcpt: "b@example.org", fwd: "b@example.org",
			fwdFrom: "\"john smith\"@example.net"},
		{name: "quoted sender, escapes kept", mail: "MAIL FROM:<\"a\\\"b\"@example.net>", rcpt: "b@example.org", fwd: "b@example.org",
			fwdFrom: "\"a\\\"b\"@example.net"},
		{name: "quoted sender, plain content unquoted", mail: "MAIL FROM:<\"ab\"@example.net>", rcpt: "b@example.org", fwd: "b@example.org",
			fwdFrom: "ab@example.net"},
		{name: "non-ASCII sender without SMTPUTF8", mail: "MAIL FROM:<jörg@example.net>", reply: hNeedUTF8},
		{name: "null sender", mail: "MAIL FROM:<>", rcpt: "b@example.org", fwd: "b@example.org"},
	}
	var cases []hcase
	for _, r := range table {
		mail := r.mail
		if mail == "" {
			mail = "MAIL FROM:<a@example.net>"
		}
		c := hcase{name: r.name, csv: routes, conf: r.conf}
		arg := "<" + r.rcpt + ">"
		if r.raw != "" {
			arg = r.raw
		}
		if r.rcpt == "" && r.raw == "" {
			// The refusal is MAIL's own.
			c.in = hEhloIn + mail + "\r\n" + hQuit
			c.out = hBanner + hEhlo + r.reply + hBye
			cases = append(cases, c)
			continue
		}
		c.in = hEhloIn + mail + "\r\n" + "RCPT TO:" + arg + "\r\n" + hQuit
		if r.reply != "" {
			c.out = hBanner + hEhlo + hMailOK + r.reply + hBye
		} else {
			c.out = hBanner + hEhlo + hMailOK + hRcptOK + hBye
			upMail := mail + "\r\n"
			if r.fwdFrom != "" {
				upMail = "MAIL FROM:<" + r.fwdFrom + ">\r\n"
			}
			c.ups = []string{hUpEhlo + upMail + "RCPT TO:<" + r.fwd + ">\r\n" + hQuit}
		}
		cases = append(cases, c)
	}
	// One upstream per transaction: a recipient routed elsewhere waits.
	cases = append(cases,
		hcase{name: "second recipient on another upstream", csv: routes,
			in:  hEnvIn + "RCPT TO:<c@[192.0.2.99]>\r\nRCPT TO:<victim@evil.example>\r\n" + hQuit,
			out: hEnvOut + hOtherUp + fmt.Sprintf(hNoRelay, "victim@evil.example") + hBye,
			ups: []string{hUpEnv + hQuit}},
		hcase{name: "each transaction routed afresh", csv: routes,
			in:  hEnvIn + "RSET\r\n" + hMailIn + "RCPT TO:<c@[192.0.2.99]>\r\nDATA\r\nx\r\n.\r\n" + hQuit,
			out: hEnvOut + hOK + hMailOK + hRcptOK + h354 + hQueued(1) + hBye,
			ups: []string{hUpEnv + "RSET\r\n" + hQuit, hUpEhlo + hUpMail + "RCPT TO:<c@[192.0.2.99]>\r\nDATA\r\nx\r\n.\r\n" + hQuit}},
		hcase{name: "VRFY and EXPN never consult the mapping", csv: routes,
			in:  hEhloIn + "VRFY victim@evil.example\r\nEXPN staff@example.org\r\n" + hQuit,
			out: hBanner + hEhlo + "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery\r\n502 5.5.1 Error: EXPN not implemented\r\n" + hBye},
	)
	hRunTable(t, cases)
}
