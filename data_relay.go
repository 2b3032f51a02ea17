package main

import (
	"cmp"
	"strings"
	"time"
)

// pipelineGrace is how long a refusal of DATA waits to see whether the
// client sent its message without waiting for the reply (RFC 2920 makes it
// wait: DATA ends a pipelined group). Such input would otherwise be read
// as commands. Refusals are rare; a client that waits loses nothing.
const pipelineGrace = 20 * time.Millisecond

// cmdData relays the message (RFC 5321 §4.1.1.4). The client gets 354 only
// after every upstream transaction's 354, and the upstreams' verdict after
// the end of data; on any abort the upstream connections are closed
// without an end of data, so they can accept nothing (security rules 4 and
// 5).
func (s *Session) cmdData(arg string) *Reply {
	tx := s.tx
	switch {
	case arg != "":
		return reply(501, "5.5.4", "Syntax: DATA") // no go-ahead can be expected
	case tx.void != nil:
		return s.dataRefused(tx.void, false)
	case tx.accepted() == 0 && len(tx.rcpts) == 0:
		return s.dataRefused(replyNeedRcpt, false) // as Postfix: no RCPT yet
	case tx.accepted() == 0:
		return s.dataRefused(replyNoValidRcpt, false)
	}
	// An upstream transaction that accepted no recipient (under fanout,
	// its RCPTs were refused) takes no part in the message.
	for _, l := range tx.withoutRecipients() {
		if l.up.reset(); l.up.usable() {
			tx.spare = append(tx.spare, l.up)
		}
	}
	var goAhead *Reply // the first leg's 354, relayed as written
	for _, l := range tx.legs {
		r, ok, err := l.up.data()
		if err != nil {
			r = tx.lose(l, faultReply(err))
		}
		if ok {
			goAhead = cmp.Or(goAhead, r)
			continue
		}
		return s.dataRefused(r, tx.void == nil)
	}
	if s.r.Buffered() > 0 || inputPending(s.conn) {
		// The message came before the go-ahead: it must not be relayed
		// as if the client had waited, nor read as commands.
		return s.dataRefused(replySyncError, true)
	}
	s.write(goAhead)
	if err := s.flush(); err != nil {
		s.abortData()
		return s.hangup(err)
	}
	return s.relayMessage()
}

// relayMessage streams the message to every leg and relays the verdict.
func (s *Session) relayMessage() *Reply {
	tx := s.tx
	sc := newDataScanner(s.cfg.MaxMessageSize)
	held := 0       // octets of a possible terminator not yet forwarded
	var lost *Reply // why a leg was lost mid-message
	for !sc.done() {
		s.conn.SetReadDeadline(s.deadline(s.cfg.CommandTimeout.Duration))
		if _, err := s.r.Peek(1); err != nil {
			// The client left or fell silent inside DATA: abort, never
			// complete the message on its behalf.
			s.abortData()
			s.logTx("client-lost-in-data", sc.size)
			return s.hangup(err)
		}
		chunk, _ := s.r.Peek(s.r.Buffered())
		n := sc.scan(chunk)
		prev := held
		held = sc.pending()
		if sc.err == nil && tx.void == nil {
			// What is certainly message content: the held-back start of
			// a line that turned out not to end the data, then this chunk
			// up to what may yet be the terminator.
			lost = s.forward(terminator[:prev-max(0, held-n)], chunk[:max(0, n-held)])
		} else {
			s.abortData()
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
	case lost != nil:
		rep = lost
	case tx.void != nil:
		rep = tx.void
	default:
		rep = s.endData()
	}
	if rep.Code/100 == 2 {
		s.messages++
		s.refused = 0
	}
	s.logTx(rep.Error(), sc.size)
	s.resetTx()
	return rep
}

// terminator is the end of data as sent upstream; a held-back prefix of
// it (".", ".\r") is message content when no "\n" follows.
const terminator = ".\r\n"

// forward writes message octets to every leg. A leg that fails voids the
// transaction: every leg is aborted, the rest of the message is still
// read, and the client gets the returned 4xx.
func (s *Session) forward(head string, body []byte) *Reply {
	for _, l := range s.tx.legs {
		err := error(nil)
		if head != "" {
			err = l.up.write([]byte(head))
		}
		if err == nil && len(body) > 0 {
			err = l.up.write(body)
		}
		if err != nil {
			r := s.tx.lose(l, faultReply(err))
			s.abortData()
			return r
		}
	}
	return nil
}

// endData sends the end of data to one leg at a time, waiting for each
// verdict. At the first that is not 2xx, the legs not yet ended are closed
// without their end of data (they discard the message) and that verdict is
// the client's: under fanout, only legs that already said 250 may then
// hold the message, and each such case is logged.
func (s *Session) endData() *Reply {
	tx := s.tx
	if len(tx.legs) > 1 {
		// Before any leg gets its end of data: one that already spoke or
		// left is lost, and the message must go nowhere, or the legs
		// that accepted it would get it again when the client retries.
		for _, l := range tx.legs {
			if !l.up.quiet() {
				l.up.drop()
				s.abortData()
				return tx.lose(l, replyUpstreamLost)
			}
		}
	}
	var done []string // verdicts of legs that accepted
	var rep *Reply
	for i, l := range tx.legs {
		r, err := l.up.endData()
		if err != nil {
			r = faultReply(err)
		}
		if r.Code/100 != 2 {
			for _, rest := range tx.legs[i+1:] {
				rest.up.drop()
			}
			if len(done) > 0 {
				s.log.Warn("message accepted by some upstreams only; the client will send it again",
					"accepted_by", strings.Join(done, "; "), "refused_by", l.up.server.String(), "reply", r.Error())
			}
			if err != nil {
				tx.lose(l, r)
			}
			return r
		}
		done = append(done, l.up.server.String()+" "+strings.Join(r.Text, " "))
		rep = r
	}
	return rep
}

// abortData closes every leg of a transaction in DATA without an end of
// data: nothing can be accepted from it.
func (s *Session) abortData() {
	for _, l := range s.tx.legs {
		if l.up.state == upData {
			l.up.drop()
		}
	}
}

// dataRefused answers a DATA that gets no 354. A client that sent more
// without waiting for that reply broke RFC 2920 (DATA ends a pipelined
// group): what it sent is most likely its message, which must not be read
// as commands, so the session ends after the reply (as Postfix does with
// smtpd_forbid_unauth_pipelining), and the reply is 554 5.5.0 unless the
// transaction is void (its 4xx stands: accepted recipients must be
// retried). end ends the transaction, as a refusal of the message does.
func (s *Session) dataRefused(r *Reply, end bool) *Reply {
	if !r.closes() && s.clientSentMore() {
		s.log.Info("improper command pipelining after DATA, closing", "client", s.clientString())
		s.closing, s.reason = true, "pipelining-after-data"
		if s.tx == nil || s.tx.void == nil {
			r = replySyncError
		}
		if s.tx != nil {
			s.abortData()
			s.logTx(r.Error(), 0)
			s.dropTx()
		}
		return r
	}
	if end && s.tx != nil {
		s.logTx(r.Error(), 0)
		s.resetTx()
	}
	return r
}

// clientSentMore reports input after the command being answered, waiting
// up to pipelineGrace for it.
func (s *Session) clientSentMore() bool {
	if s.r.Buffered() > 0 || inputPending(s.conn) {
		return true
	}
	s.conn.SetReadDeadline(time.Now().Add(pipelineGrace))
	_, err := s.r.Peek(1)
	s.conn.SetReadDeadline(time.Time{})
	return err == nil
}

// logTx writes the one info line per transaction.
func (s *Session) logTx(result string, size int64) {
	tx := s.tx
	up, upTLS, xc := tx.upstreams()
	s.log.Info("transaction", "client", s.clientString(), "helo", s.helo, "tls", orNone(s.tlsInfo),
		"from", tx.from, "rcpts", tx.rcptList(), "upstream", up,
		"upstream_tls", upTLS, "xclient", xc, "result", result, "size", size,
		"duration", time.Since(tx.start).Round(time.Millisecond))
	tx.logged = true
}
