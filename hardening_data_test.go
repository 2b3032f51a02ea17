package main

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Class 1: end of data and smuggling. Message bodies with every
// combination of CR, LF, NUL and "." around line ends, pipelined commands
// after the payload, the same inside a message over the size limit and
// after STARTTLS; every case's client bytes split at every offset and sent
// one byte per segment.

// hRefViolation is the offset of the first octet that breaks the line
// discipline in message data (the DATA command's CRLF precedes it), or -1.
// It is written independently of data.go on purpose.
func hRefViolation(body string) int {
	prevCR := false
	for i := 0; i < len(body); i++ {
		c := body[i]
		if prevCR && c != '\n' || !prevCR && c == '\n' || c == 0 {
			return i
		}
		prevCR = c == '\r'
	}
	return -1
}

// hRefEnd is the length of the message data up to and including its end
// (the first CR LF "." CR LF, the DATA command's CRLF counting as the
// first CR LF), or -1.
func hRefEnd(body string) int {
	i := strings.Index("\r\n"+body, "\r\n.\r\n")
	if i < 0 {
		return -1
	}
	return i + 3
}

// hDataCase builds a class 1 case: the standard envelope, DATA, body (which
// must end at its first end of data), then QUIT.
func hDataCase(name, body string) hcase {
	if hRefEnd(body) != len(body) {
		panic("hDataCase " + name + ": body must end at its first end of data")
	}
	c := hcase{name: name, in: hDataIn + body + hQuit}
	if v := hRefViolation(body); v >= 0 {
		c.out = hEnvOut + h354 + hBadData + hBye
		c.ups = []string{hPartialOf(hUpData, body[:v])}
	} else {
		c.out = hEnvOut + h354 + hQueued(1) + hBye
		c.ups = []string{hUpData + body + hQuit}
	}
	return c
}

// hSmuggled is what an attacker puts after a pseudo end of data: a second
// transaction that must never reach the upstream as one.
const hSmuggled = "MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nFrom: ceo@example.org\r\n\r\nsmuggled\r\n"

func hClass1Cases() []hcase {
	var cases []hcase
	add := func(name, body string) { cases = append(cases, hDataCase(name, body)) }

	// Canonical messages around dots and line ends: forwarded verbatim.
	add("empty message", ".\r\n")
	add("one empty line", "\r\n.\r\n")
	add("one line", "Subject: x\r\n\r\nhello\r\n.\r\n")
	add("stuffed lone dot", "..\r\n.\r\n")
	add("stuffed dots", "a\r\n..\r\n...\r\n.a\r\n..a\r\n.\r\n")
	add("dot space", "a\r\n. \r\n.\r\n")
	add("dot tab", "a\r\n.\t\r\n.\r\n")
	add("dot then text", "a\r\n.b\r\n.\r\n")
	add("dot at line end", "a.\r\n.\r\n")
	add("dots inside a line", "a.b..c\r\n.\r\n")
	add("stuffed pseudo commands", "a\r\n.MAIL FROM:<evil@example.com>\r\n..\r\nQUIT\r\n.\r\n")
	add("empty lines", "\r\n\r\n\r\n.\r\n")
	add("8-bit and control octets", "caf\xc3\xa9 \x01\x1b[0m \x7f\xff\r\n.\r\n")
	add("long line", strings.Repeat("x", 3000)+"\r\n.\r\n")

	// Violations at the start, middle and end of a line.
	add("bare LF first", "\n.\r\n\r\n.\r\n")
	add("bare CR first", "\r.\r\n\r\n.\r\n")
	add("NUL first", "\x00\r\n.\r\n")
	add("NUL inside", "ab\x00cd\r\n.\r\n")
	add("NUL before CRLF", "ab\x00\r\n.\r\n")
	add("NUL after dot", "a\r\n.\x00\r\n.\r\n")
	add("NUL before dot", "a\r\n\x00.\r\n.\r\n")
	add("NUL in a stuffed line", "..\x00\r\n.\r\n")
	add("CR CR LF", "a\r\r\nb\r\n.\r\n")
	add("LF CR LF", "a\n\r\nb\r\n.\r\n")
	add("CR LF LF", "a\r\n\nb\r\n.\r\n")
	add("LF CR", "a\n\rb\r\n.\r\n")
	add("bare CR mid-line", "a\rb\r\n.\r\n")
	add("bare LF mid-line", "a\nb\r\n.\r\n")
	add("bare CR at the end", "abc\r\r\n.\r\n")

	// Every pseudo end of data an upstream parser might accept, followed
	// by a smuggled transaction and then the real end.
	pre := []string{"", "\r\n", "\n", "\r", "\x00", "\r\r\n", "\n\r", "\r\n\x00", " \r\n"}
	post := []string{"", "\r\n", "\n", "\r", "\x00", "\r\r\n", "\n\r", "\x00\r\n", " \r\n"}
	for i, a := range pre {
		for j, b := range post {
			body := "Subject: hi\r\n\r\nline" + a + "." + b + hSmuggled + ".\r\n"
			if hRefEnd(body) != len(body) {
				continue // a real end of data: see the explicit cases below
			}
			add(fmt.Sprintf("pseudo end %d.%d %s.%s", i, j, strconv.Quote(a), strconv.Quote(b)), body)
		}
	}
	// A dot-stuffed pseudo end is message text.
	add("stuffed pseudo end", "line\r\n..\r\n"+hSmuggled+".\r\n")

	// The real end of data after a violation: the rest is commands, read
	// and answered by willi, the first message refused and never ended.
	cases = append(cases, hcase{
		name: "real end after bare CR, then a second transaction",
		in:   hDataIn + "line\r\r\n.\r\n" + hSmuggled + ".\r\n" + hQuit,
		out:  hEnvOut + h354 + hBadData + hMailOK + hRcptOK + h354 + hQueued(1) + hBye,
		ups: []string{hPartialOf(hUpData, "line\r"),
			"EHLO mx.test\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nFrom: ceo@example.org\r\n\r\nsmuggled\r\n.\r\nQUIT\r\n"},
	})

	// Pipelined commands after the payload.
	second := "MAIL FROM:<c@example.net>\r\nRCPT TO:<d@example.org>\r\nDATA\r\nsecond\r\n.\r\n"
	upSecond := "MAIL FROM:<c@example.net>\r\nRCPT TO:<d@example.org>\r\nDATA\r\nsecond\r\n.\r\n"
	cases = append(cases,
		hcase{
			name: "pipelined second transaction",
			in:   hDataIn + "first\r\n.\r\n" + second + hQuit,
			out:  hEnvOut + h354 + hQueued(1) + hMailOK + hRcptOK + h354 + hQueued(2) + hBye,
			ups:  []string{hUpData + "first\r\n.\r\n" + upSecond + hQuit},
		},
		hcase{
			name: "pipelined second transaction after a refused message",
			in:   hDataIn + "first\n.\n\r\n.\r\n" + second + hQuit,
			out:  hEnvOut + h354 + hBadData + hMailOK + hRcptOK + h354 + hQueued(1) + hBye,
			ups:  []string{hPartialOf(hUpData, "first"), hUpEhlo + upSecond + hQuit},
		},
		hcase{
			name: "pipelined RSET NOOP after the end",
			in:   hDataIn + "x\r\n.\r\nRSET\r\nNOOP\r\n" + hQuit,
			out:  hEnvOut + h354 + hQueued(1) + hOK + hOK + hBye,
			ups:  []string{hUpData + "x\r\n.\r\n" + hQuit},
		},
		hcase{
			name: "pipelined commands after a refused message",
			in:   hDataIn + "x\x00\r\n.\r\nRSET\r\nNOOP\r\n" + hQuit,
			out:  hEnvOut + h354 + hBadData + hOK + hOK + hBye,
			ups:  []string{hPartialOf(hUpData, "x")},
		},
		hcase{
			name: "DATA ended by a bare LF is no DATA",
			in:   hEnvIn + "DATA\nhello\r\n.\r\n" + hQuit,
			out:  hEnvOut + "500 5.5.2 Error: command not terminated by CRLF\r\n500 5.5.2 Error: command not recognized\r\n",
			ups:  []string{hUpEnv + hQuit},
		},
	)

	// The same inside a message over the size limit: read to the real end,
	// never forwarded, 552 whatever else is wrong with it; what follows the
	// real end is commands. At most the first max_message_size octets (and
	// a "." or ".\r" that might have been the end) may have gone out
	// before the abort.
	big := func(name, body, tail, out string, more ...string) {
		if hRefEnd(body) != len(body) {
			panic("big " + name + ": body must end at its first end of data")
		}
		c := hcase{name: name, conf: "max_message_size = 64", in: hDataIn + body + tail + hQuit,
			out: strings.Replace(hEnvOut, "52428800", "64", 1) + h354 + out}
		if strings.HasPrefix(out, "250") {
			c.ups = []string{hUpData + body + hQuit}
		} else {
			maybe := body[:66]
			if v := hRefViolation(body); v >= 0 && v < len(maybe) {
				maybe = body[:v]
			}
			c.ups = []string{hPartialOf(hUpData, maybe)}
		}
		c.ups = append(c.ups, more...)
		cases = append(cases, c)
	}
	x62 := strings.Repeat("x", 62)
	big("exactly max_message_size", x62+"\r\n.\r\n", "", hQueued(1)+hBye)
	big("exactly max_message_size, stuffed", x62[4:]+"\r\n..\r\n.\r\n", "", hQueued(1)+hBye)
	big("one octet over", x62+"x\r\n.\r\n", "", hTooBig+hBye)
	big("over by a stuffed line", x62+"\r\n..\r\n.\r\n", "", hTooBig+hBye)
	big("over with a pseudo end and a hSmuggled transaction",
		strings.Repeat("y", 100)+"\n.\n"+hSmuggled+".\r\n", "NOOP\r\n", hTooBig+hOK+hBye)
	big("over with a CRLF pseudo end and a hSmuggled transaction",
		strings.Repeat("y", 100)+"\r\n..\r\n"+hSmuggled+".\r\n", "NOOP\r\n", hTooBig+hOK+hBye)
	big("over, then a bare LF", strings.Repeat("y", 100)+"\r\nz\n\r\n.\r\n", "", hTooBig+hBye)
	big("bare LF, then over", "z\n"+strings.Repeat("y", 100)+"\r\n.\r\n", "", hTooBig+hBye)
	big("over, then pipelined commands", strings.Repeat("z\r\n", 40)+".\r\n",
		"RSET\r\nMAIL FROM:<c@example.net>\r\nRCPT TO:<d@example.org>\r\nDATA\r\nok\r\n.\r\n",
		hTooBig+hOK+hMailOK+hRcptOK+h354+hQueued(1)+hBye,
		hUpEhlo+"MAIL FROM:<c@example.net>\r\nRCPT TO:<d@example.org>\r\nDATA\r\nok\r\n.\r\n"+hQuit)
	return cases
}

// TestHardeningData runs class 1: each case in one segment, one byte per
// segment, and split in two at every offset.
func TestHardeningData(t *testing.T) {
	for _, c := range hClass1Cases() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			cfg := hConfig(t, c)
			hRun(t, c, cfg, nil).check(t, c, "one segment")
			hRun(t, c, cfg, hOneByte(c.in)).check(t, c, "one byte per segment")
			var wg sync.WaitGroup
			sem := make(chan struct{}, 4)
			for cut := 1; cut < len(c.in); cut++ {
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer func() { <-sem; wg.Done() }()
					if msg := hRun(t, c, cfg, hSplit(c.in, cut)).verify(c, fmt.Sprintf("split at %d", cut)); msg != "" {
						t.Error(msg)
					}
				}()
			}
			wg.Wait()
		})
	}
}
