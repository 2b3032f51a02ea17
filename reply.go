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

// fixedReply builds a reply whose text is used as it is: the package's
// fixed replies, made at every process start, skip fmt.
func fixedReply(code int, enh, text string) *Reply {
	return &Reply{Code: code, Enh: enh, Text: []string{text}}
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
	replyBadSequenceNoHelo = fixedReply(503, "5.5.1", "Error: send HELO/EHLO first")
	replyNestedMail        = fixedReply(503, "5.5.1", "Error: nested MAIL command")
	replyNeedMail          = fixedReply(503, "5.5.1", "Error: need MAIL command")
	replyNeedRcpt          = fixedReply(503, "5.5.1", "Error: need RCPT command")
	replyNoValidRcpt       = fixedReply(554, "5.5.1", "Error: no valid recipients")
	replyLineTooLong       = fixedReply(500, "5.5.2", "Error: line too long")
	replyBadChars          = fixedReply(500, "5.5.2", "Error: bad characters in command")
	replyBareLF            = fixedReply(500, "5.5.2", "Error: command not terminated by CRLF")
	replyUnknownCommand    = fixedReply(500, "5.5.2", "Error: command not recognized")
	replyTooManyErrors     = fixedReply(421, "4.7.0", "Error: too many errors, closing connection")
	replyTimeout           = fixedReply(421, "4.4.2", "Error: timeout exceeded, closing connection")
	replyShutdown          = fixedReply(421, "4.3.2", "Service shutting down, closing connection")
	replyInternal          = fixedReply(421, "4.3.0", "Internal error, closing connection")
	replyHTTP              = fixedReply(421, "4.7.0", "Error: this is an SMTP server, not HTTP")
	replySyncError         = fixedReply(554, "5.5.0", "Error: SMTP protocol synchronization")
	replyBDAT              = fixedReply(521, "5.5.1", "Error: BDAT without CHUNKING, closing connection")
	replyNoAuth            = fixedReply(502, "5.5.1", "Error: authentication not enabled")
	replyNotImplemented    = fixedReply(502, "5.5.1", "Error: command not implemented")
	replyTooManyRcpts      = fixedReply(452, "4.5.3", "Error: too many recipients")
	replyOtherUpstream     = fixedReply(452, "4.5.3", "Error: too many recipients; send this one in a new transaction")
	replyMessageTooBig     = fixedReply(552, "5.3.4", "Error: message file too big")
	replyBadLineEnding     = fixedReply(550, "5.5.2", "Error: message contains bare CR, bare LF or NUL; not delivered")
	replyLookupFailed      = fixedReply(451, "4.3.0", "Error: temporary routing lookup failure, try again later")
	replyBadRoute          = fixedReply(451, "4.3.5", "Error: routing configuration error, try again later")
	replyRouteLoop         = fixedReply(451, "4.4.6", "Error: routing loop detected, try again later")
	replyUpstreamDown      = fixedReply(451, "4.4.1", "Error: no upstream server reachable, try again later")
	replyUpstreamLost      = fixedReply(451, "4.4.2", "Error: upstream connection lost, try again later")
	replyUpstreamTimeout   = fixedReply(451, "4.4.2", "Error: upstream timed out, try again later")
	replyUpstreamProtocol  = fixedReply(451, "4.5.0", "Error: upstream protocol error, try again later")
	replyUpstreamTLS       = fixedReply(451, "4.7.5", "Error: upstream TLS failed, try again later")
	replyUpstreamNoTLS     = fixedReply(451, "4.7.4", "Error: upstream does not offer STARTTLS, try again later")
	replyXCLIENTRefused    = fixedReply(451, "4.7.0", "Error: upstream refused XCLIENT, try again later")
	replyTooManyRefused    = fixedReply(421, "4.7.0", "Error: too many errors and refused recipients, closing connection")
	replyConfig            = fixedReply(421, "4.3.0", "Service unavailable: configuration error, closing connection")
)
