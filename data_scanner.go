package main

import (
	"bytes"
	"errors"
)

// Why DATA is checked and not re-encoded: the end of data is only the five
// octets CR LF "." CR LF (the first CR LF may be the one that ended the DATA
// command), found on the raw client bytes whatever the TCP segmentation. In
// between, every CR must be followed by LF, every LF preceded by CR, and no
// NUL may appear (security rules 1-3). Data that passes is already canonical
// (CRLF lines, dot-stuffed by the client), so it is forwarded as it came,
// chunk by chunk, with no per-line work. Data that fails never reaches the
// upstream: its chunk is withheld and the upstream connection is closed.

var (
	errBareCRLF = errors.New("bare CR or LF in message data")
	errNUL      = errors.New("NUL in message data")
	errTooBig   = errors.New("message exceeds max_message_size")
)

// The end-of-data automaton: eod counts how much of "\r\n.\r\n" has been
// matched. It starts at 2: the DATA command's own CRLF.
const (
	eodNone  = 0 // nothing matched
	eodCR    = 1 // "\r"
	eodCRLF  = 2 // "\r\n": at the start of a line
	eodDot   = 3 // "\r\n."
	eodDotCR = 4 // "\r\n.\r"
	eodDone  = 5 // "\r\n.\r\n"
)

// dataScanner follows message data octet by octet (with fast skips over
// line contents), finds its end and the first line-discipline violation.
type dataScanner struct {
	eod    int
	prevCR bool  // the previous octet was CR
	size   int64 // octets seen, terminator excluded
	max    int64 // 0 = unlimited
	err    error // first violation; scanning goes on to the end of data
}

func newDataScanner(max int64) *dataScanner {
	return &dataScanner{eod: eodCRLF, max: max}
}

// done reports that the end of data was seen.
func (d *dataScanner) done() bool { return d.eod == eodDone }

// pending is how many octets at the end of what was scanned may belong to
// the end of data (".", ".\r", or all of ".\r\n" once done): they are
// not known to be message content yet.
func (d *dataScanner) pending() int {
	switch d.eod {
	case eodDot:
		return 1
	case eodDotCR:
		return 2
	case eodDone:
		return 3
	}
	return 0
}

// scan consumes p up to and including the end of data and returns how many
// octets of p belong to the message. Octets after the end of data (pipelined
// commands) are not consumed.
func (d *dataScanner) scan(p []byte) int {
	i := 0
	for i < len(p) {
		if d.eod == eodNone && !d.prevCR {
			// Mid-line: skip to the next CR or LF. Only a NUL in between
			// matters.
			j := bytes.IndexByte(p[i:], '\n')
			seg := p[i:]
			if j >= 0 {
				seg = p[i : i+j]
			}
			if k := bytes.IndexByte(seg, '\r'); k >= 0 {
				seg = seg[:k]
			}
			if d.err == nil && bytes.IndexByte(seg, 0) >= 0 {
				d.err = errNUL
			}
			i += len(seg)
			if i == len(p) {
				break
			}
		}
		d.step(p[i])
		i++
		if d.eod == eodDone {
			d.size += int64(i) - 3 // ".\r\n" is not message content
			d.checkSize()
			return i
		}
	}
	d.size += int64(i)
	d.checkSize()
	return i
}

// checkSize counts only octets known to be message content: a "." or ".\r"
// at the start of a line may yet be the terminator. So the verdict does not
// depend on where the chunks were cut, and an oversized message is refused
// as too big whatever else is wrong with it.
func (d *dataScanner) checkSize() {
	size := d.size
	switch d.eod {
	case eodDot:
		size--
	case eodDotCR:
		size -= 2
	}
	if d.max > 0 && size > d.max {
		d.err = errTooBig
	}
}

// step advances both automata by one octet.
func (d *dataScanner) step(c byte) {
	if d.err == nil {
		switch {
		case d.prevCR && c != '\n', !d.prevCR && c == '\n':
			d.err = errBareCRLF
		case c == 0:
			d.err = errNUL
		}
	}
	d.prevCR = c == '\r'
	switch {
	case c == '\r':
		if d.eod == eodDot {
			d.eod = eodDotCR
		} else {
			d.eod = eodCR
		}
	case c == '\n' && d.eod == eodCR:
		d.eod = eodCRLF
	case c == '\n' && d.eod == eodDotCR:
		d.eod = eodDone
	case c == '.' && d.eod == eodCRLF:
		d.eod = eodDot
	default:
		d.eod = eodNone
	}
}
