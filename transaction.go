package main

import (
	"strconv"
	"strings"
	"time"
)

// transaction is one client mail transaction and the truth about it: the
// envelope, every recipient with the reply the client was given, and the
// upstream transactions (legs) that hold the accepted ones.
//
// The invariant, kept by lose alone: every recipient the client was told
// 250 is in a leg whose upstream transaction is intact, and the end-of-data
// verdict relayed to the client is that of every such leg. When a leg that
// holds an accepted recipient is lost (connection gone, timeout, protocol
// violation, 421), the whole client transaction is void: every later RCPT,
// DATA and end of data gets void, a 4xx naming the reason, until RSET, a
// new greeting or the end of the session. No 5xx is ever answered because
// of an upstream's fault.
type transaction struct {
	envelope
	start  time.Time
	rcpts  []recipient // every RCPT that named an address, in order
	legs   []*leg      // one per upstream, several only under fanout
	spare  []*upstream // connections it used that hold no leg (MAIL refused, no recipient accepted)
	void   *Reply      // set once a leg with accepted recipients was lost
	logged bool        // its log line is written
}

// recipient is one RCPT and the reply code the client got for it.
type recipient struct {
	addr string
	code int
}

// leg is one upstream transaction: MAIL accepted there, and the recipients
// it accepted.
type leg struct {
	up       *upstream
	accepted []string
}

// newTransaction starts a transaction for MAIL FROM.
func newTransaction(e envelope) *transaction {
	return &transaction{envelope: e, start: time.Now()}
}

// legFor returns the transaction's leg to routeID, or nil.
func (tx *transaction) legFor(routeID string) *leg {
	for _, l := range tx.legs {
		if l.up.routeID == routeID {
			return l
		}
	}
	return nil
}

// accepted counts the recipients the client was told 250.
func (tx *transaction) accepted() int {
	n := 0
	for _, l := range tx.legs {
		n += len(l.accepted)
	}
	return n
}

// withoutRecipients takes the legs that accepted no recipient out of the
// transaction and returns them.
func (tx *transaction) withoutRecipients() []*leg {
	var none []*leg
	kept := tx.legs[:0]
	for _, l := range tx.legs {
		if len(l.accepted) == 0 {
			none = append(none, l)
		} else {
			kept = append(kept, l)
		}
	}
	tx.legs = kept
	return none
}

// answered records the client's reply to a RCPT for addr.
func (tx *transaction) answered(addr string, r *Reply) {
	tx.rcpts = append(tx.rcpts, recipient{addr: addr, code: r.Code})
}

// lose takes a leg whose upstream connection failed (already closed) out
// of the transaction and returns the reply for the command that found out:
// why, a 4xx. When the leg held accepted recipients, the transaction is
// void from now on, and every later RCPT, DATA and end of data gets void.
func (tx *transaction) lose(l *leg, why *Reply) *Reply {
	for i, x := range tx.legs {
		if x == l {
			tx.legs = append(tx.legs[:i], tx.legs[i+1:]...)
			break
		}
	}
	if tx.void != nil {
		return tx.void
	}
	if len(l.accepted) > 0 {
		text := "upstream lost"
		if len(why.Text) > 0 {
			text = strings.TrimSuffix(strings.TrimPrefix(why.Text[0], "Error: "), ", try again later")
		}
		tx.void = reply(451, "4.4.2", "Error: transaction void: the upstream that accepted its recipients failed (%s); send RSET and try again", text)
	}
	return why
}

// rcptList is the log's view of the recipients: address:code, in order.
func (tx *transaction) rcptList() string {
	var b strings.Builder
	for i, r := range tx.rcpts {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(r.addr)
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(r.code))
	}
	return b.String()
}

// upstreams names the legs' servers for the log.
func (tx *transaction) upstreams() (servers, tlsInfo, xclient string) {
	if len(tx.legs) == 0 {
		return "none", "none", "none"
	}
	var s, t, x []string
	for _, l := range tx.legs {
		s = append(s, l.up.server.String())
		t = append(t, orNone(l.up.tlsInfo()))
		x = append(x, l.up.xclient)
	}
	return strings.Join(s, ","), strings.Join(t, ","), strings.Join(x, ",")
}
