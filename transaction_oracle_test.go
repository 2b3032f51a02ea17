package main

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// The oracle of TestTransactionInvariant: the checks (a)-(f) over a
// finished session, from the client's transcript, what each upstream
// received and answered, and willi's log.

// ivTx is one client transaction: from a MAIL answered 250 to the reply to
// its end of data, RSET, a greeting, STARTTLS, QUIT, a new MAIL answered
// 250 or the end of the session. A DATA refused does not end it.
type ivTx struct {
	from    string
	mail    int   // index of its MAIL in the entries
	entries []int // its RCPT, DATA and end of data
	dot     int   // index of its end of data; -1 for none
	told    map[string]int
}

func ivTransactions(entries []ivEntry) []*ivTx {
	var txs []*ivTx
	var cur *ivTx
	end := func() {
		if cur != nil {
			txs = append(txs, cur)
			cur = nil
		}
	}
	for i, e := range entries {
		switch e.cmd.kind {
		case ivMail:
			if e.code == 250 {
				end()
				cur = &ivTx{from: e.cmd.from, mail: i, dot: -1, told: map[string]int{}}
			}
		case ivRcpt, ivData:
			if cur != nil {
				cur.entries = append(cur.entries, i)
				if e.cmd.kind == ivRcpt && e.code == 250 {
					cur.told[e.cmd.addr] = i
				}
			}
		case ivDot:
			if cur != nil {
				cur.entries = append(cur.entries, i)
				cur.dot = i
			}
			end()
		case ivRset, ivQuit:
			end()
		case ivGreet:
			if e.code == 250 {
				end()
			}
		case ivStartTLS:
			if e.code == 220 {
				end()
			}
		}
	}
	end()
	return txs
}

// ivNever is an entry index past every session.
const ivNever = 1 << 30

// ivCheck runs the oracle over a finished session.
func ivCheck(res *ivResult) {
	entries := res.entries
	var upTxs []*ivUpTx
	for _, c := range res.ups.conns {
		upTxs = append(upTxs, c.txs...)
		for _, v := range c.viol {
			res.problem("f", "%s", v)
		}
	}
	rcptAt := map[string]int{}
	for i, e := range entries {
		if e.cmd.kind == ivRcpt && e.cmd.addr != "" {
			rcptAt[e.cmd.addr] = i
		}
	}
	txs := ivTransactions(entries)
	for _, tx := range txs {
		var mine []*ivUpTx
		for _, x := range upTxs {
			if x.from == tx.from {
				mine = append(mine, x)
			}
		}
		// firstData is the first DATA of tx after entry i.
		firstData := func(i int) int {
			for _, j := range tx.entries {
				if j > i && entries[j].cmd.kind == ivData {
					return j
				}
			}
			return ivNever
		}
		// lastRcpt is the last RCPT x received, by client entry.
		lastRcpt := func(x *ivUpTx) int {
			last := tx.mail
			for _, a := range x.rcpts {
				if j, ok := rcptAt[a]; ok && j > last {
					last = j
				}
			}
			return last
		}

		// (b): the first entry from which the transaction is void: the
		// client command on whose behalf willi sent the upstream command
		// that an injected fault answered.
		void, why := ivNever, ""
		for _, x := range mine {
			if x.end != "lost" {
				continue
			}
			var lost []string
			for a := range x.accepted {
				if _, ok := tx.told[a]; ok {
					lost = append(lost, a)
				}
			}
			if len(lost) == 0 {
				continue
			}
			sort.Strings(lost)
			at := ivNever
			switch l := x.lostAt; {
			case strings.HasPrefix(l, "RCPT TO:<"):
				a, _ := ivPath(strings.TrimPrefix(l, "RCPT "), "TO:")
				if j, ok := rcptAt[a]; ok {
					at = j
				}
			case l == "DATA":
				at = firstData(lastRcpt(x))
			case l == "middata" || l == "dot":
				at = tx.dot
				if at < 0 {
					at = firstData(lastRcpt(x))
				}
			}
			// Else willi closed the connection itself ("eof after ..."):
			// when, the upstream cannot tell; (a) still checks delivery.
			if at < void {
				void, why = at, fmt.Sprintf("%s (upstream conn %d lost at %q)", strings.Join(lost, ","), x.conn.n, x.lostAt)
			}
		}
		// Holders: the upstream transactions holding a recipient the
		// client was told 250 for (several only under fanout).
		holders := 0
		for _, x := range mine {
			for a := range x.accepted {
				if _, ok := tx.told[a]; ok {
					holders++
					break
				}
			}
		}
		flagged := map[int]bool{}
		for _, i := range tx.entries {
			e := entries[i]
			if i < void || e.cmd.kind == ivRcpt && e.cmd.addr == "" {
				continue
			}
			if code, ok := res.ups.marked(e.reply); ok && code/100 == 5 && i == tx.dot && holders > 1 &&
				(strings.Contains(why, `"middata"`) || strings.Contains(why, `"dot"`)) {
				// Under fanout, another upstream's own 5xx verdict on the
				// whole message, while the lost one failed taking the
				// message: a write into its socket had succeeded, so
				// willi could not know; one reply covers every recipient.
				continue
			}
			if e.code/100 != 4 {
				res.problem("b", "%q got %q after the loss of %s; want 4xx", e.cmd.line, ivFirstLine(e.reply), why)
				flagged[i] = true
			}
		}

		// (c): every other 5xx has a reason that is not a fault.
		for _, i := range tx.entries {
			e := entries[i]
			if e.code/100 != 5 || flagged[i] {
				continue
			}
			if code, ok := res.ups.marked(e.reply); ok && code/100 == 5 {
				continue // the upstream's own verdict, relayed
			}
			ok := false
			switch e.cmd.kind {
			case ivRcpt:
				ok = e.cmd.addr == "" && e.code == 501 ||
					strings.HasSuffix(e.cmd.addr, "@"+ivUnrouted) && strings.HasPrefix(e.reply, "550 5.7.1 ")
			case ivData:
				told := false
				for _, j := range tx.told {
					told = told || j < i
				}
				ok = !told && (strings.HasPrefix(e.reply, "554 5.5.1 ") || strings.HasPrefix(e.reply, "503 5.5.1 "))
			}
			if !ok {
				res.problem("c", "%q got %q: a 5xx that no upstream verdict and no policy of willi's explains", e.cmd.line, ivFirstLine(e.reply))
			}
		}

		// (d): a 354 only after the 354 of every upstream transaction
		// holding a recipient the client was told 250 for.
		for _, i := range tx.entries {
			e := entries[i]
			if e.cmd.kind != ivData || e.code != 354 {
				continue
			}
			holders := 0
			for _, x := range mine {
				holds := false
				for a := range x.accepted {
					j, ok := tx.told[a]
					holds = holds || ok && j < i
				}
				if !holds || x.end == "lost" && x.lostAt != "middata" && x.lostAt != "dot" && x.lostAt != "eof in data" {
					continue
				}
				holders++
				if x.seq354 == 0 || x.seq354 > e.seq {
					res.problem("d", "DATA got 354 before upstream conn %d (holding recipients of %s) sent its 354", x.conn.n, tx.from)
				}
			}
			if holders == 0 && !flagged[i] {
				res.problem("d", "DATA got 354 though no live upstream transaction holds a recipient of %s", tx.from)
			}
		}

		// (a): the end of data.
		if tx.dot < 0 {
			continue
		}
		e := entries[tx.dot]
		var got []*ivUpTx
		for _, x := range mine {
			if x.gotDot {
				got = append(got, x)
			}
		}
		if e.code != 250 {
			// One upstream accepted, the client told otherwise: a
			// duplicate when it retries. Not counted when willi gave
			// its own 4xx (a timeout: the 250 may have come late), nor
			// with several upstreams, where one reply cannot say both.
			_, relayed := res.ups.marked(e.reply)
			// Under fanout the documented case: an upstream that said 250
			// before another failed; willi must log it at warn.
			logged := holders > 1 && strings.Contains(res.log, `msg="message accepted by some upstreams only`)
			if len(got) == 1 && got[0].dotCode == 250 && (relayed || e.code/100 != 4) && !logged {
				res.problem("a", "upstream conn %d accepted the message of %s, the client got %q: a duplicate when it retries", got[0].conn.n, tx.from, ivFirstLine(e.reply))
			}
			continue
		}
		if len(got) == 0 {
			res.problem("a", "end of data of %s got %q but no upstream received the message", tx.from, ivFirstLine(e.reply))
			continue
		}
		union := map[string]bool{}
		for _, x := range got {
			if x.dotCode != 250 {
				res.problem("a", "end of data of %s got %q but upstream conn %d answered %d", tx.from, ivFirstLine(e.reply), x.conn.n, x.dotCode)
			}
			if x.body != e.cmd.plain {
				res.problem("a", "upstream conn %d received the message of %s altered", x.conn.n, tx.from)
			}
			for a := range x.accepted {
				union[a] = true
			}
		}
		var missing, extra []string
		for a := range tx.told {
			if !union[a] {
				missing = append(missing, a)
			}
		}
		for a := range union {
			if _, ok := tx.told[a]; !ok {
				extra = append(extra, a)
			}
		}
		if len(missing) > 0 || len(extra) > 0 {
			sort.Strings(missing)
			sort.Strings(extra)
			res.problem("a", "end of data of %s got %q: told 250 but not delivered: [%s]; delivered but not told 250: [%s]",
				tx.from, ivFirstLine(e.reply), strings.Join(missing, " "), strings.Join(extra, " "))
		}
	}
	ivCheckLog(res, txs)
}

// ivCheckLog is (e): one transaction line per transaction, naming every
// recipient with the code it got, and the result.
func ivCheckLog(res *ivResult, txs []*ivTx) {
	lines := map[string][]map[string]string{}
	for _, l := range strings.Split(res.log, "\n") {
		if !strings.Contains(l, " msg=transaction ") {
			continue
		}
		f := ivLogFields(l)
		lines[f["from"]] = append(lines[f["from"]], f)
	}
	for _, tx := range txs {
		ls := lines[tx.from]
		if len(ls) != 1 {
			res.problem("e", "%d transaction log lines for from=%s; want 1", len(ls), tx.from)
			continue
		}
		var want []string
		for _, i := range tx.entries {
			// A 421 that closes the session after an earlier command's
			// reply (too many errors) answers a RCPT willi never read.
			if e := res.entries[i]; e.cmd.kind == ivRcpt && e.cmd.addr != "" && e.code != 421 {
				want = append(want, fmt.Sprintf("%s:%d", e.cmd.addr, e.code))
			}
		}
		if got := ls[0]["rcpts"]; got != strings.Join(want, ",") {
			res.problem("e", "transaction from=%s logged rcpts=%s; want rcpts=%s", tx.from, got, strings.Join(want, ","))
		}
		result := ls[0]["result"]
		if result == "" {
			res.problem("e", "transaction from=%s logged no result", tx.from)
		} else if tx.dot >= 0 && !strings.HasPrefix(result, strconv.Itoa(res.entries[tx.dot].code)) {
			res.problem("e", "transaction from=%s logged result=%q; the end of data got %q", tx.from, result, ivFirstLine(res.entries[tx.dot].reply))
		}
	}
}

// ivLogFields splits a slog text line into its keys and values.
func ivLogFields(line string) map[string]string {
	m := map[string]string{}
	for {
		line = strings.TrimLeft(line, " ")
		k, rest, ok := strings.Cut(line, "=")
		if !ok {
			return m
		}
		var v string
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return m
			}
			v, _ = strconv.Unquote(q)
			rest = rest[len(q):]
		} else {
			v, rest, _ = strings.Cut(rest, " ")
		}
		m[k] = v
		line = rest
	}
}

// marked returns the code an upstream sent with the marker in rep.
func (u *ivUpstreams) marked(rep string) (int, bool) {
	i := strings.Index(rep, "[u")
	if i < 0 {
		return 0, false
	}
	m, _, _ := strings.Cut(rep[i:], "]")
	n, err := strconv.Atoi(strings.Split(m[2:], ".")[0])
	if err != nil || n >= len(u.conns) {
		return 0, false
	}
	code, ok := u.conns[n].markers[m+"]"]
	return code, ok
}

func ivFirstLine(rep string) string {
	l, _, _ := strings.Cut(rep, "\r\n")
	return l
}

// report is everything needed to understand and replay a failing session.

// ivClassNames head the summary of TestTransactionInvariant.
var ivClassNames = map[string]string{
	"a": "end of data 250 not for exactly the recipients delivered",
	"b": "no 4xx after a recipient told 250 was lost",
	"c": "a 5xx that is not an upstream's verdict or willi's policy",
	"d": "354 order, hang or malformed reply",
	"e": "transaction log line",
	"f": "protocol violation seen by an upstream",
}
