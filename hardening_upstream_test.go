package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Class 6: upstream faults. Refused, closing after the banner, 421 at any
// stage, stalls at any stage, malformed, oversized and unsolicited
// replies, dying inside DATA, rejecting the final dot, a slow verdict.
// Every failure of willi's own is a 4xx; the client never gets 250 for a
// message the upstream did not accept.

func TestHardeningUpstream(t *testing.T) {
	const fast = "upstream_connect_timeout = \"1s\"\nupstream_command_timeout = \"1s\"\nupstream_data_timeout = \"1s\""
	env := hEnvIn + hQuit
	full := hDataIn + "x\r\n.\r\n" + hQuit
	envOut := func(rcpt string) string { return hBanner + hEhlo + hMailOK + rcpt + hBye }
	// When DATA is refused, the client (which waits for the reply to DATA,
	// as RFC 2920 asks) does not send its message, and quits.
	fullOut := func(data string) string { return hEnvOut + data + hBye }
	eodOut := func(final string) string { return hEnvOut + h354 + final + hBye }
	static := func(server string) string {
		return "[[mapping]]\ntype = \"static\"\nserver = \"" + server + "\"\n"
	}
	busy := "421 4.3.2 busy\r\n"
	cases := []hcase{
		// Unreachable and refusing.
		{name: "connection refused", tables: static("down.test:25"), in: env, out: envOut(hUpDown)},
		{name: "failover past a refused server", tables: static("down.test:25 up1.test:25"), in: env,
			out: envOut(hRcptOK), ups: []string{hUpEnv + hQuit}},
		{name: "closes at once", up: upScript{"banner": "<close>"}, in: env, out: envOut(hUpDown), ups: []string{""}},
		{name: "closes after the banner", up: upScript{"EHLO": "<close>"}, in: env, out: envOut(hLost), ups: []string{hUpEhlo}},
		{name: "421 banner", up: upScript{"banner": busy}, in: env, out: envOut(hUpDown), ups: []string{""}},
		{name: "554 banner", up: upScript{"banner": "554 5.3.2 go away\r\n"}, in: env, out: envOut(hUpDown), ups: []string{""}},
		{name: "421 banner, then failover", up: upScript{"banner": busy}, tables: static("up1.test:25 up2.test:25"), in: env,
			out: envOut(hUpDown), ups: []string{"", ""}},
		// 421 at every stage: relayed as 451 with its text, never a 5xx.
		{name: "421 to EHLO", up: upScript{"EHLO": busy}, in: env, out: envOut(hUpDown), ups: []string{hUpEhlo}},
		{name: "421 to MAIL", up: upScript{"MAIL": busy}, in: env, out: envOut("451 4.3.2 busy\r\n"), ups: []string{hUpEhlo + hUpMail}},
		{name: "421 to RCPT", up: upScript{"RCPT": busy}, in: env, out: envOut("451 4.3.2 busy\r\n"), ups: []string{hUpEnv}},
		{name: "421 to DATA", up: upScript{"DATA": busy}, in: full, out: fullOut("451 4.3.2 busy\r\n"),
			ups: []string{hUpData}},
		{name: "421 to the end of data", up: upScript{".": busy}, in: full, out: eodOut("451 4.3.2 busy\r\n"),
			ups: []string{hUpData + "x\r\n.\r\n"}},
		// Stalls at every stage.
		{name: "stalls before the banner", conf: fast, up: upScript{"banner": "<stall>"}, in: env, out: envOut(hUpDown), ups: []string{""}},
		{name: "stalls at EHLO", conf: fast, up: upScript{"EHLO": "<stall>"}, in: env, out: envOut(hUpSlow), ups: []string{hUpEhlo}},
		{name: "stalls at MAIL", conf: fast, up: upScript{"MAIL": "<stall>"}, in: env, out: envOut(hUpSlow), ups: []string{hUpEhlo + hUpMail}},
		{name: "stalls at RCPT", conf: fast, up: upScript{"RCPT": "<stall>"}, in: env, out: envOut(hUpSlow), ups: []string{hUpEnv}},
		{name: "stalls at DATA", conf: fast, up: upScript{"DATA": "<stall>"}, in: full, out: fullOut(hUpSlow),
			ups: []string{hUpData}},
		{name: "stalls at the end of data", conf: fast, up: upScript{".": "<stall>"}, in: full, out: eodOut(hUpSlow),
			ups: []string{hUpData + "x\r\n.\r\n"}},
		{name: "slow verdict within upstream_data_timeout", conf: "upstream_command_timeout = \"1s\"",
			up: upScript{".": "<sleep 2s>250 2.0.0 slow but queued\r\n"}, in: full, out: eodOut("250 2.0.0 slow but queued\r\n"),
			ups: []string{hUpData + "x\r\n.\r\n" + hQuit}},
		{name: "verdict after upstream_data_timeout", conf: fast, up: upScript{".": "<sleep 3s>250 2.0.0 too late\r\n"},
			in: full, out: eodOut(hUpSlow), ups: []string{hUpData + "x\r\n.\r\n"}},
		// Malformed, oversized and out-of-place replies.
		{name: "malformed banner", up: upScript{"banner": "hello\r\n"}, in: env, out: envOut(hUpDown), ups: []string{""}},
		{name: "reply code changes within a reply", up: upScript{"EHLO": "250-up.test\r\n251 mixed\r\n"}, in: env,
			out: envOut(hUpProto), ups: []string{hUpEhlo}},
		{name: "four-digit code", up: upScript{"MAIL": "2500 ok\r\n"}, in: env, out: envOut(hUpProto), ups: []string{hUpEhlo + hUpMail}},
		{name: "code 600", up: upScript{"MAIL": "600 ok\r\n"}, in: env, out: envOut(hUpProto), ups: []string{hUpEhlo + hUpMail}},
		{name: "code 150", up: upScript{"RCPT": "150 ok\r\n"}, in: env, out: envOut(hUpProto), ups: []string{hUpEnv}},
		{name: "reply line over 512 octets", up: upScript{"RCPT": "250 " + strings.Repeat("x", 600) + "\r\n"}, in: env,
			out: envOut(hUpProto), ups: []string{hUpEnv}},
		{name: "reply of 150 lines", up: upScript{"EHLO": strings.Repeat("250-X\r\n", 150) + "250 ok\r\n"}, in: env,
			out: envOut(hUpProto), ups: []string{hUpEhlo}},
		{name: "reply without a line end", conf: fast, up: upScript{"RCPT": "250 ok"}, in: env, out: envOut(hUpSlow), ups: []string{hUpEnv}},
		{name: "354 to MAIL", up: upScript{"MAIL": "354 go on\r\n"}, in: env, out: envOut(hUpProto), ups: []string{hUpEhlo + hUpMail}},
		{name: "354 to RCPT", up: upScript{"RCPT": "354 go on\r\n"}, in: env, out: envOut(hUpProto), ups: []string{hUpEnv}},
		{name: "250 to DATA is no go-ahead", up: upScript{"DATA": "250 2.0.0 ok\r\n"}, in: full,
			out: fullOut(hUpProto), ups: []string{hUpData}},
		{name: "354 to the end of data", up: upScript{".": "354 more\r\n"}, in: full, out: eodOut(hUpProto),
			ups: []string{hUpData + "x\r\n.\r\n"}},
		// Unsolicited bytes.
		{name: "unsolicited after the banner", up: upScript{"banner": "220 up.test\r\n250 extra\r\n"}, in: env,
			out: envOut(hUpDown), ups: []string{""}},
		{name: "unsolicited after MAIL's reply", up: upScript{"MAIL": "250 2.1.0 ok\r\n250 2.1.5 ok\r\n"}, in: env,
			out: envOut(hUpProto), ups: []string{hUpEhlo + hUpMail}},
		{name: "unsolicited after 354", up: upScript{"DATA": "354 go\r\n250 2.0.0 queued\r\n"}, in: full,
			out: fullOut(hUpProto), ups: []string{hUpData}},
		{name: "unsolicited after the verdict", up: upScript{".": "250 2.0.0 queued\r\n250 2.0.0 again\r\n"}, in: full,
			out: eodOut(hUpProto), ups: []string{hUpData + "x\r\n.\r\n"}},
		// Dying inside DATA, and verdicts relayed as written.
		{name: "dies inside DATA", up: upScript{"data": "<close>"}, in: hDataIn + strings.Repeat("line\r\n", 2000) + ".\r\n" + hQuit,
			out: eodOut(hLost), ups: []string{hPartialOf(hUpData, strings.Repeat("line\r\n", 2000))}},
		{name: "rejects the final dot", up: upScript{".": "554 5.7.1 rejected as spam\r\n"}, in: full,
			out: eodOut("554 5.7.1 rejected as spam\r\n"), ups: []string{hUpData + "x\r\n.\r\n" + hQuit}},
		{name: "defers the final dot", up: upScript{".": "451 4.3.0 try later\r\n"}, in: full,
			out: eodOut("451 4.3.0 try later\r\n"), ups: []string{hUpData + "x\r\n.\r\n" + hQuit}},
		{name: "552 to RCPT becomes 452", up: upScript{"RCPT": "552 5.2.2 mailbox full\r\n"}, in: env,
			out: envOut("452 4.2.2 mailbox full\r\n"), ups: []string{hUpEnv + hQuit}},
		{name: "reply text cleaned", up: upScript{"RCPT": "550 5.1.1 no such\x1b[31m user\xff\x00\r\n"}, in: env,
			out: envOut("550 5.1.1 no such?[31m user??\r\n"), ups: []string{hUpEnv + hQuit}},
		{name: "multi-line reply relayed", up: upScript{"RCPT": "550-5.1.1 first\r\n550 5.1.1 second\r\n"}, in: env,
			out: envOut("550-5.1.1 first\r\n550 5.1.1 second\r\n"), ups: []string{hUpEnv + hQuit}},
		{name: "reply without an enhanced code gets one", up: upScript{"RCPT": "550 no such user\r\n"}, in: env,
			out: envOut("550 5.0.0 no such user\r\n"), ups: []string{hUpEnv + hQuit}},
		{name: "enhanced code of another class", up: upScript{"RCPT": "550 2.1.5 odd\r\n"}, in: env,
			out: envOut("550 5.0.0 2.1.5 odd\r\n"), ups: []string{hUpEnv + hQuit}},
		{name: "EHLO refused: HELO, no parameters", up: upScript{"EHLO": "502 5.5.1 no\r\n"},
			in: hEhloIn + "MAIL FROM:<a@example.net> SIZE=10 BODY=7BIT\r\n" + hRcptIn + hQuit, out: envOut(hRcptOK),
			ups: []string{hUpEhlo + "HELO mx.test\r\n" + hUpMail + hUpRcpt + hQuit}},
		{name: "RSET refused: the next transaction dials afresh", up: upScript{"RSET": "500 5.5.1 no\r\n"},
			in: hEnvIn + "RSET\r\n" + hMailIn + hRcptIn + hQuit, out: hEnvOut + hOK + hMailOK + hRcptOK + hBye,
			ups: []string{hUpEnv + "RSET\r\n" + hQuit, hUpEnv + hQuit}},
	}
	hRunTable(t, cases)
}

// TestHardeningMapping runs class 7: every way a CSV or MySQL mapping can
// fail stops the chain with a 4xx (never a later mapping, never a dial),
// and a route to an empty, malformed or willi's own address is refused.
func TestHardeningMapping(t *testing.T) {
	dir := t.TempDir()
	csvFile := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// A CSV mapping, then the static default that must never be reached
	// when the CSV fails.
	chain := func(first string) string {
		return first + "[[mapping]]\ntype = \"static\"\nserver = \"up2.test:25\"\n"
	}
	csv := func(path string) string { return chain(fmt.Sprintf("[[mapping]]\ntype = \"csv\"\nfile = %q\n", path)) }
	mysql := func(dsn string) string {
		return chain(fmt.Sprintf("[[mapping]]\ntype = \"mysql\"\ndsn = %q\nquery = \"SELECT server FROM routes WHERE pattern = ?\"\n", dsn))
	}
	// A database that accepts and says nothing, one that talks nonsense,
	// and a port where nothing listens.
	silent := hListen(t, func(c net.Conn) { buf := make([]byte, 512); c.Read(buf) })
	garbage := hListen(t, func(c net.Conn) { c.Write([]byte("220 this is not MySQL\r\n")) })
	dead := fmt.Sprintf("127.0.0.1:%d", deadPort(t))

	const (
		lookupFailed = "451 4.3.0 Error: temporary routing lookup failure, try again later\r\n"
		badRoute     = "451 4.3.5 Error: routing configuration error, try again later\r\n"
		routeLoop    = "451 4.4.6 Error: routing loop detected, try again later\r\n"
	)
	env := hEnvIn + hQuit
	out := func(rcpt string) string { return hBanner + hEhlo + hMailOK + rcpt + hBye }
	viaUp2 := []string{hUpEnv + hQuit}
	cases := []hcase{
		{name: "csv: file missing", tables: csv(filepath.Join(dir, "missing.csv")), in: env, out: out(lookupFailed)},
		{name: "csv: a directory", tables: csv(dir), in: env, out: out(lookupFailed)},
		{name: "csv: no server column", tables: csv(csvFile("noserver.csv", "pattern,host\nexample.org,up1.test:25\n")), in: env, out: out(lookupFailed)},
		{name: "csv: no header", tables: csv(csvFile("noheader.csv", "example.org,up1.test:25\n")), in: env, out: out(lookupFailed)},
		{name: "csv: empty file", tables: csv(csvFile("empty.csv", "")), in: env, out: out(lookupFailed)},
		{name: "csv: unterminated quote", tables: csv(csvFile("quote.csv", "pattern,server\n\"example.org,up1.test:25\n")), in: env, out: out(lookupFailed)},
		{name: "csv: binary", tables: csv(csvFile("binary.csv", "\x00\x01\x02\xff\xfe\n\x00")), in: env, out: out(lookupFailed)},
		{name: "csv: header only: no answer, the chain goes on", tables: csv(csvFile("header.csv", "pattern,server\n")), in: env,
			out: out(hRcptOK), ups: viaUp2},
		{name: "csv: empty server", tables: csv(csvFile("emptyserver.csv", "pattern,server\nexample.org,\n")), in: env, out: out(lookupFailed)},
		{name: "csv: blank server", tables: csv(csvFile("blankserver.csv", "pattern,server\nexample.org,\" \"\n")), in: env, out: out(lookupFailed)},
		{name: "csv: malformed server", tables: csv(csvFile("badserver.csv", "pattern,server\nexample.org,bad host!\n")), in: env, out: out(badRoute)},
		{name: "csv: port 0", tables: csv(csvFile("port0.csv", "pattern,server\nexample.org,up1.test:0\n")), in: env, out: out(badRoute)},
		{name: "csv: port 65536", tables: csv(csvFile("port65536.csv", "pattern,server\nexample.org,up1.test:65536\n")), in: env, out: out(badRoute)},
		{name: "csv: no host", tables: csv(csvFile("nohost.csv", "pattern,server\nexample.org,:25\n")), in: env, out: out(badRoute)},
		{name: "csv: bad IPv6", tables: csv(csvFile("badv6.csv", "pattern,server\nexample.org,[::1\n")), in: env, out: out(badRoute)},
		{name: "csv: wildcard is literal", tables: csv(csvFile("wild.csv", "pattern,server\n*.org,up1.test:25\n")), in: env,
			out: out(hRcptOK), ups: viaUp2},
		{name: "csv: willi's own address", tables: csv(csvFile("own.csv", "pattern,server\nexample.org,192.0.2.10:25\n")), in: env, out: out(routeLoop)},
		{name: "csv: willi's own name", tables: csv(csvFile("ownname.csv", "pattern,server\nexample.org,MX.Test.\n")), in: env, out: out(routeLoop)},
		{name: "csv: willi's own address first of two", tables: csv(csvFile("ownfirst.csv", "pattern,server\nexample.org,192.0.2.10 up1.test\n")), in: env, out: out(routeLoop)},
		{name: "csv: own address, another port", tables: csv(csvFile("ownport.csv", "pattern,server\nexample.org,192.0.2.10:2525\n")), in: env, out: out(hUpDown)},
		{name: "mysql: nothing listens", tables: mysql("willi:x@tcp(" + dead + ")/mail?timeout=2s"), in: env, out: out(lookupFailed)},
		{name: "mysql: server says nothing", tables: mysql("willi:x@tcp(" + silent + ")/mail?timeout=1s&readTimeout=1s&writeTimeout=1s"), in: env, out: out(lookupFailed)},
		{name: "mysql: not a database", tables: mysql("willi:x@tcp(" + garbage + ")/mail?timeout=2s&readTimeout=2s"), in: env, out: out(lookupFailed)},
		{name: "mysql: malformed DSN", tables: mysql("not a dsn"), in: env, out: out(badRoute)},
	}
	hRunTable(t, cases)
}

// hListen serves every loopback connection with fn, then closes it.
func hListen(t *testing.T, fn func(net.Conn)) string {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fn(c)
			}()
		}
	}()
	return l.Addr().String()
}
