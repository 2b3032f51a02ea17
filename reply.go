package main

import (
	"fmt"
	"strconv"
	"strings"
)

// Reply is one SMTP reply, ours or an upstream's. It is also an error, so a
// function that fails can hand the client exactly what it should be told.
type Reply struct {
	Code int
	Enh  string   // enhanced status code (RFC 3463), e.g. "5.5.2"; "" for none
	Text []string // one entry per line, without code or enhanced code
}

func (r *Reply) Error() string {
	return fmt.Sprintf("%d %s %s", r.Code, r.Enh, strings.Join(r.Text, " / "))
}

// reply builds one of willi's own replies.
func reply(code int, enh, format string, a ...any) *Reply {
	return &Reply{Code: code, Enh: enh, Text: []string{fmt.Sprintf(format, a...)}}
}

// Temporary reports a 4xx reply.
func (r *Reply) Temporary() bool { return r.Code/100 == 4 }

// Positive reports a 2xx or 3xx reply.
func (r *Reply) Positive() bool { return r.Code/100 == 2 || r.Code/100 == 3 }

// closes reports replies after which the connection is closed (RFC 5321
// §3.8; Postfix hangs up after 421 and 521).
func (r *Reply) closes() bool { return r.Code == 421 || r.Code == 521 || r.Code == 221 }

// maxReplyLine bounds each line we send (RFC 5321 §4.5.3.1.5: 512 octets
// including CRLF).
const maxReplyLine = 512

// appendTo formats the reply onto b: every line "CODE[-| ]ENH TEXT\r\n",
// its text made printable US-ASCII and cut to fit in maxReplyLine.
func (r *Reply) appendTo(b []byte) []byte {
	lines := r.Text
	if len(lines) == 0 {
		lines = []string{""}
	}
	code := strconv.Itoa(r.Code)
	for i, line := range lines {
		start := len(b)
		b = append(b, code...)
		if i < len(lines)-1 {
			b = append(b, '-')
		} else {
			b = append(b, ' ')
		}
		if r.Enh != "" {
			b = append(b, r.Enh...)
			if line != "" {
				b = append(b, ' ')
			}
		}
		for j := 0; j < len(line) && len(b)-start < maxReplyLine-2; j++ {
			c := line[j]
			if c < 0x20 || c > 0x7e {
				c = '?'
			}
			b = append(b, c)
		}
		b = append(b, '\r', '\n')
	}
	return b
}

// withCode returns a copy of r with another code, the enhanced code's class
// moved to match (e.g. 552 5.2.2 to RCPT becomes 452 4.2.2).
func (r *Reply) withCode(code int) *Reply {
	c := *r
	c.Code = code
	if len(c.Enh) > 1 {
		c.Enh = strconv.Itoa(code/100) + c.Enh[1:]
	}
	return &c
}

// Well-known replies of willi's own.
var (
	replyBadSequenceNoHelo = reply(503, "5.5.1", "Error: send HELO/EHLO first")
	replyNestedMail        = reply(503, "5.5.1", "Error: nested MAIL command")
	replyNeedMail          = reply(503, "5.5.1", "Error: need MAIL command")
	replyNeedRcpt          = reply(503, "5.5.1", "Error: need RCPT command")
	replyNoValidRcpt       = reply(554, "5.5.1", "Error: no valid recipients")
	replyLineTooLong       = reply(500, "5.5.2", "Error: line too long")
	replyBadChars          = reply(500, "5.5.2", "Error: bad characters in command")
	replyBareLF            = reply(500, "5.5.2", "Error: command not terminated by CRLF")
	replyUnknownCommand    = reply(500, "5.5.2", "Error: command not recognized")
	replyTooManyErrors     = reply(421, "4.7.0", "Error: too many errors, closing connection")
	replyTimeout           = reply(421, "4.4.2", "Error: timeout exceeded, closing connection")
	replyShutdown          = reply(421, "4.3.2", "Service shutting down, closing connection")
	replyInternal          = reply(421, "4.3.0", "Internal error, closing connection")
	replyHTTP              = reply(421, "4.7.0", "Error: this is an SMTP server, not HTTP")
	replyEarlyTalker       = reply(554, "5.5.0", "Error: SMTP protocol synchronization")
	replyBDAT              = reply(521, "5.5.1", "Error: BDAT without CHUNKING, closing connection")
	replyNoAuth            = reply(502, "5.5.1", "Error: authentication not enabled")
	replyNotImplemented    = reply(502, "5.5.1", "Error: command not implemented")
	replyTooManyRcpts      = reply(452, "4.5.3", "Error: too many recipients")
	replyOtherUpstream     = reply(452, "4.5.3", "Error: too many recipients; send this one in a new transaction")
	replyMessageTooBig     = reply(552, "5.3.4", "Error: message file too big")
	replyBadLineEnding     = reply(550, "5.5.2", "Error: message contains bare CR, bare LF or NUL; not delivered")
	replyLookupFailed      = reply(451, "4.3.0", "Error: temporary routing lookup failure, try again later")
	replyBadRoute          = reply(451, "4.3.5", "Error: routing configuration error, try again later")
	replyRouteLoop         = reply(451, "4.4.6", "Error: routing loop detected, try again later")
	replyUpstreamDown      = reply(451, "4.4.1", "Error: no upstream server reachable, try again later")
	replyUpstreamLost      = reply(451, "4.4.2", "Error: upstream connection lost, try again later")
	replyUpstreamTimeout   = reply(451, "4.4.2", "Error: upstream timed out, try again later")
	replyUpstreamProtocol  = reply(451, "4.5.0", "Error: upstream protocol error, try again later")
	replyUpstreamTLS       = reply(451, "4.7.5", "Error: upstream TLS failed, try again later")
	replyUpstreamNoTLS     = reply(451, "4.7.4", "Error: upstream does not offer STARTTLS, try again later")
	replyXCLIENTRefused    = reply(451, "4.7.0", "Error: upstream refused XCLIENT, try again later")
	replyConfig            = reply(421, "4.3.0", "Service unavailable: configuration error, closing connection")
)
