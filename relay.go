package main

import (
	"strings"
	"time"
)

// cmdData relays the message (RFC 5321 §4.1.1.4). The client gets 354 only
// after the upstream's 354, and the upstream's final verdict after the end
// of data; on any abort the upstream connection is closed without an end of
// data, so it can accept nothing (security rules 4 and 5).
func (s *Session) cmdData(arg string) *Reply {
	if arg != "" {
		return s.dataRefused(reply(501, "5.5.4", "Syntax: DATA"))
	}
	if !s.tx.bound || s.up == nil || len(s.tx.rcpts) == 0 {
		if s.tx.attempted == 0 {
			return s.dataRefused(replyNeedRcpt) // as Postfix: no RCPT yet
		}
		return s.dataRefused(replyNoValidRcpt)
	}
	u := s.up
	r, err := u.cmd("DATA")
	if err != nil {
		return s.dataRefused(s.endTx(s.upstreamLost(err), 0))
	}
	if r.Code != 354 {
		if r.Positive() {
			u.close()
			r = replyUpstreamProtocol
		} else {
			r = u.relay(r, false)
		}
		if u.broken {
			s.upstreamGone()
		}
		return s.dataRefused(s.endTx(r, 0))
	}
	u.inData = true
	s.write(r)
	if err := s.flush(); err != nil {
		u.close()
		return s.hangup(err)
	}

	sc := newDataScanner(s.cfg.MaxMessageSize)
	var upErr error
	for !sc.done() {
		s.conn.SetReadDeadline(s.deadline(s.cfg.CommandTimeout.Duration))
		if _, err := s.r.Peek(1); err != nil {
			// The client left or fell silent inside DATA: abort, never
			// complete the message on its behalf.
			u.close()
			s.upstreamGone()
			s.logTx(nil, sc.size, "client-lost-in-data")
			return s.hangup(err)
		}
		chunk, _ := s.r.Peek(s.r.Buffered())
		n := sc.scan(chunk)
		if sc.err == nil && upErr == nil {
			u.conn.SetWriteDeadline(time.Now().Add(s.cfg.UpstreamCommandTimeout.Duration))
			if _, err := u.conn.Write(chunk[:n]); err != nil {
				upErr = err
				u.close()
			}
		} else if !u.broken {
			u.close()
		}
		s.r.Discard(n)
	}

	var rep *Reply
	switch {
	case sc.err == errTooBig:
		rep = replyMessageTooBig
	case sc.err != nil:
		s.log.Warn("message refused", "err", sc.err)
		rep = replyBadLineEnding
	case upErr != nil:
		rep = u.failure(upErr)
	default:
		// RFC 5321 §4.5.3.2.6: wait up to 10 minutes for the verdict.
		fr, err := u.reply(s.cfg.UpstreamDataTimeout.Duration)
		switch {
		case err != nil:
			rep = u.failure(err)
		case fr.Code/100 == 3:
			u.close()
			rep = replyUpstreamProtocol
		default:
			rep = u.relay(fr, false)
		}
	}
	u.inTx, u.inData = false, false
	if u.broken {
		s.upstreamGone()
	}
	if rep.Code/100 == 2 {
		s.messages++
	}
	return s.endTx(rep, sc.size)
}

// dataRefused answers a DATA that gets no 354. A client that sent more
// without waiting for that reply broke RFC 2920 (DATA ends a pipelined
// group): what it sent is most likely its message, which must not be read
// as commands, so the session ends after the reply (as Postfix does with
// smtpd_forbid_unauth_pipelining).
func (s *Session) dataRefused(r *Reply) *Reply {
	if s.r.Buffered() > 0 && !r.closes() {
		s.log.Info("improper command pipelining after DATA, closing", "client", s.clientString())
		s.closing, s.reason = true, "pipelining-after-data"
	}
	return r
}

// endTx logs the transaction and clears it; the upstream connection stays
// open for the next transaction when it is still usable.
func (s *Session) endTx(rep *Reply, size int64) *Reply {
	s.logTx(rep, size, "")
	s.resetTx()
	return rep
}

// logTx writes the one info line per transaction.
func (s *Session) logTx(rep *Reply, size int64, note string) {
	result := note
	if rep != nil {
		result = rep.Error()
	}
	up, upTLS, xc := "none", "none", "none"
	if u := s.up; u != nil {
		up, upTLS, xc = u.server.String(), orNone(u.tls), u.xclient
	} else if s.tx.bound {
		up = s.tx.route.ID()
	}
	s.log.Info("transaction", "client", s.clientString(), "helo", s.helo, "tls", orNone(s.tlsInfo),
		"from", s.tx.from, "rcpts", strings.Join(s.tx.rcpts, ","), "upstream", up,
		"upstream_tls", upTLS, "xclient", xc, "result", result, "size", size,
		"duration", time.Since(s.tx.start).Round(time.Millisecond))
	s.tx.logged = true
}
