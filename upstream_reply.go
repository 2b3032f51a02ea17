package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// The translation of what an upstream says (or fails to say) into what the
// client is told. Every upstream outcome reaches the client through
// relayReply (a reply to a command) or faultReply (no usable reply).

// Limits on what an upstream can make us read (security rule 6).
const (
	maxUpstreamLine  = 512
	maxUpstreamLines = 100
)

// errUpstreamProtocol is a reply that breaks RFC 5321, or unsolicited bytes.
var errUpstreamProtocol = errors.New("upstream protocol violation")

// errUpstreamClosed is a command for an upstream whose connection is
// already gone.
var errUpstreamClosed = errors.New("upstream connection closed")

// readReply parses one reply from br, strictly: 3 digits (2-5 first), '-'
// or ' ' or end of line, the same code on every line, bounded line length
// and count. Each raw line is handed to seen (for the debug transcript)
// unless seen is nil. The enhanced status code is split off when every
// line carries the same one of the reply's class.
func readReply(br *bufio.Reader, seen func(line string)) (*Reply, error) {
	rep := &Reply{}
	var lines []string
	for n := 0; ; n++ {
		if n == maxUpstreamLines {
			return nil, fmt.Errorf("%w: more than %d reply lines", errUpstreamProtocol, maxUpstreamLines)
		}
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull || len(line) > maxUpstreamLine {
			return nil, fmt.Errorf("%w: reply line too long", errUpstreamProtocol)
		}
		if err != nil {
			if err == io.EOF && len(line) == 0 {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
		l := strings.TrimSuffix(strings.TrimSuffix(string(line), "\n"), "\r")
		if seen != nil {
			seen(l)
		}
		if len(l) < 3 || l[0] < '2' || l[0] > '5' || !isDigit(l[1]) || !isDigit(l[2]) || len(l) > 3 && l[3] != ' ' && l[3] != '-' {
			return nil, fmt.Errorf("%w: bad reply line %.40q", errUpstreamProtocol, l)
		}
		code, _ := strconv.Atoi(l[:3])
		if n == 0 {
			rep.Code = code
		} else if code != rep.Code {
			return nil, fmt.Errorf("%w: reply code changed within a reply", errUpstreamProtocol)
		}
		text := ""
		if len(l) > 4 {
			text = l[4:]
		}
		lines = append(lines, text)
		if len(l) == 3 || l[3] == ' ' {
			break
		}
	}
	rep.Text = lines
	splitEnhanced(rep)
	return rep, nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// splitEnhanced moves an enhanced status code present on every line into
// rep.Enh. A reply without one keeps its text, and Enh gets the class's
// generic code so that our client still sees one (RFC 2034).
func splitEnhanced(rep *Reply) {
	class := byte('0' + rep.Code/100)
	enh := ""
	for i, l := range rep.Text {
		e, _, _ := strings.Cut(l, " ")
		if !isEnhanced(e) || e[0] != class || i > 0 && e != enh {
			enh = ""
			break
		}
		enh = e
	}
	if enh == "" {
		if rep.Code/100 != 3 {
			rep.Enh = string(class) + ".0.0"
		}
		return
	}
	for i, l := range rep.Text {
		_, rest, _ := strings.Cut(l, " ")
		rep.Text[i] = rest
	}
	rep.Enh = enh
}

// isEnhanced: class "." subject "." detail, RFC 3463.
func isEnhanced(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || len(parts[0]) != 1 || parts[0][0] < '2' || parts[0][0] > '5' {
		return false
	}
	for _, p := range parts[1:] {
		if len(p) < 1 || len(p) > 3 {
			return false
		}
		for i := 0; i < len(p); i++ {
			if !isDigit(p[i]) {
				return false
			}
		}
	}
	return true
}

// relayReply turns an upstream's reply to a command into the client's:
// code, enhanced code and text as the upstream wrote them, except that a 421
// becomes 451 (the client's session goes on; the upstream's is over) and 552
// to RCPT becomes 452 (RFC 5321 §4.5.3.1.10).
func relayReply(r *Reply, rcpt bool) *Reply {
	switch {
	case r.Code == 421:
		return r.withCode(451)
	case rcpt && r.Code == 552:
		return r.withCode(452)
	}
	return r
}

// faultReply is the client's reply for an upstream that gave no usable
// reply: always a 4xx, so the client retries (the fault is not the
// message's).
func faultReply(err error) *Reply {
	var r *Reply
	switch {
	case errors.As(err, &r):
		return r
	case errors.Is(err, errUpstreamProtocol):
		return replyUpstreamProtocol
	case errors.Is(err, os.ErrDeadlineExceeded):
		return replyUpstreamTimeout
	}
	return replyUpstreamLost
}
