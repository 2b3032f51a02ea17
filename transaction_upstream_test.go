package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The upstreams of TestTransactionInvariant: one scripted server per dial,
// correct except at the step its fault names, recording what it received
// and answered per upstream transaction, for the oracle.

// ivUpstreams serves every dial of one session.
type ivUpstreams struct {
	t       testing.TB
	faults  []ivFault
	xclient bool
	plain   bool          // no ENHANCEDSTATUSCODES: replies without enhanced codes
	seq     *atomic.Int64 // orders upstream 354s against the client's

	mu    sync.Mutex
	conns []*ivConn
	wg    sync.WaitGroup
}

// ivConn is one upstream connection. Its fields are written by its server
// goroutine and read by the oracle after wg.Wait.
type ivConn struct {
	n       int // dial index
	server  string
	fault   *ivFault
	counts  map[string]int
	replies int
	markers map[string]int // reply marker -> the code sent with it
	txs     []*ivUpTx
	cur     *ivUpTx // the open transaction (MAIL accepted)
	last    string  // the last command received
	lost    bool    // a fault ended the connection
	fired   bool    // its fault was injected
	viol    []string
	log     strings.Builder
}

// ivUpTx is one upstream mail transaction: from its MAIL's 250 to the reply
// to its end of data, RSET, QUIT or the loss of the connection.
type ivUpTx struct {
	conn     *ivConn
	from     string
	rcpts    []string       // RCPTs received, in order
	codes    map[string]int // RCPT address -> the code answered
	accepted map[string]bool
	seq354   int64 // when its 354 was sent; 0 for never
	gotDot   bool  // the whole message with its final dot arrived
	body     string
	dotCode  int    // the reply to the end of data; 0 for none
	end      string // "" (open), dot, rset, quit, lost
	lostAt   string // the command or step at which it was lost
}

// ivWait bounds every wait in the test: only a hang reaches it.
const ivWait = 10 * time.Second

func (u *ivUpstreams) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if addr != ivUpstream1 && addr != ivUpstream2 {
		return nil, fmt.Errorf("dial %s: connection refused", addr)
	}
	u.mu.Lock()
	c := &ivConn{n: len(u.conns), server: addr, counts: map[string]int{}, markers: map[string]int{}}
	for i := range u.faults {
		if u.faults[i].dial == c.n && c.fault == nil {
			c.fault = &u.faults[i]
		}
	}
	u.conns = append(u.conns, c)
	u.wg.Add(1)
	u.mu.Unlock()
	var ours, theirs net.Conn
	if c.fault != nil && c.fault.kind == "reset" {
		// A true RST needs TCP: SO_LINGER 0 on a loopback connection.
		var err error
		if ours, theirs, err = ivTCPPair(); err != nil {
			u.wg.Done()
			return nil, err
		}
	} else {
		a, b := fzSocketPair(u.t)
		ours, theirs = a, b
	}
	go u.serve(c, theirs)
	return ours, nil
}

// ivTCPPair is a connected loopback TCP pair: willi's end, the server's.
func ivTCPPair() (net.Conn, net.Conn, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	defer l.Close()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		return nil, nil, err
	}
	b, err := l.Accept()
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, b, nil
}

// wait ends the session's upstreams; false when one is still running
// after ivWait (willi left it open).
func (u *ivUpstreams) wait() bool {
	done := make(chan struct{})
	go func() {
		u.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(ivWait):
		return false
	}
}

func (c *ivConn) violate(format string, a ...any) {
	c.viol = append(c.viol, fmt.Sprintf("upstream conn %d (%s): ", c.n, c.server)+fmt.Sprintf(format, a...))
}

// lose ends the open transaction: the connection is gone under it.
func (c *ivConn) lose(at string) {
	c.lost = true
	if c.cur != nil {
		c.cur.end, c.cur.lostAt = "lost", at
		c.cur = nil
	}
}

// ivUpServer is the state of one server goroutine.
type ivUpServer struct {
	u     *ivUpstreams
	c     *ivConn
	conn  net.Conn
	r     *bufio.Reader
	host  string
	state int
	close bool // close after the current reply ("after" fault)
}

const (
	ivUpGreet = iota // banner or XCLIENT's 220 sent: EHLO/HELO next
	ivUpReady
	ivUpMail
	ivUpRefused // banner refused: only QUIT
)

func (u *ivUpstreams) serve(c *ivConn, conn net.Conn) {
	defer u.wg.Done()
	defer conn.Close()
	sv := &ivUpServer{u: u, c: c, conn: conn, r: bufio.NewReaderSize(conn, 4096), host: strings.TrimSuffix(c.server, ":25")}
	sv.run()
}

// reply writes one reply, its last line ending in a marker "[uN.K]" that
// names it, so that the oracle can tell which upstream reply willi relayed.
func (sv *ivUpServer) reply(code int, enh, text string) {
	c := sv.c
	c.replies++
	m := fmt.Sprintf("[u%d.%d]", c.n, c.replies)
	c.markers[m] = code
	if sv.u.plain {
		enh = ""
	}
	// Several lines where text has "\n": every line is relayed.
	lines := strings.Split(text, "\n")
	lines[len(lines)-1] += " " + m
	var b strings.Builder
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		if enh != "" {
			l = enh + " " + l
		}
		fmt.Fprintf(&b, "%d%s%s\r\n", code, sep, l)
	}
	sv.write(b.String())
}

func (sv *ivUpServer) write(s string) {
	sv.c.log.WriteString("U: " + s)
	sv.conn.SetWriteDeadline(time.Now().Add(ivWait))
	sv.conn.Write([]byte(s))
}

// fire counts event and injects the connection's fault when this is its
// step. It reports whether the fault answered the command (or ended the
// connection: gone).
func (sv *ivUpServer) fire(event, at string) (answered, gone bool) {
	c := sv.c
	c.counts[event]++
	f := c.fault
	if f == nil || f.event != event || f.nth != c.counts[event] {
		return false, false
	}
	c.fired = true
	c.log.WriteString(fmt.Sprintf("-- fault: %s at %s\n", f.kind, at))
	switch f.kind {
	case "421":
		c.lose(at)
		sv.reply(421, "4.3.2", sv.host+" Service shutting down")
	case "4xx":
		sv.reply(451, "4.3.0", "Temporary failure\ninjected at "+event)
		return true, false
	case "5xx":
		sv.reply(554, "5.3.0", "Permanent failure\ninjected at "+event)
		return true, false
	case "close":
		c.lose(at)
	case "reset":
		c.lose(at)
		if tc, ok := sv.conn.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
	case "garbage":
		c.lose(at)
		sv.write("garbage in place of a reply\r\n")
	case "stall":
		// Silent past willi's timeout: read on until willi closes.
		c.lose(at)
		sv.conn.SetReadDeadline(time.Now().Add(ivWait))
		io.Copy(io.Discard, sv.r)
	case "after":
		sv.close = true
		return false, false
	}
	return true, true
}

func (sv *ivUpServer) run() {
	c := sv.c
	if answered, gone := sv.fire("banner", "banner"); gone {
		return
	} else if answered {
		// A 4xx or 5xx banner: RFC 5321 §3.1, only QUIT is useful now.
		sv.state = ivUpRefused
	} else {
		sv.reply(220, "", sv.host+" ESMTP")
	}
	for {
		sv.conn.SetReadDeadline(time.Now().Add(ivWait))
		line, err := sv.r.ReadString('\n')
		if line != "" {
			c.log.WriteString("W: " + line)
		}
		if err != nil {
			if line != "" {
				c.violate("incomplete line %q", line)
			}
			if c.cur != nil {
				c.lose("eof after " + c.last)
			}
			return
		}
		if !strings.HasSuffix(line, "\r\n") || len(line) > 512 {
			c.violate("not a command line: %q", line)
			return
		}
		l := strings.TrimSuffix(line, "\r\n")
		c.last = l
		if !sv.command(l) {
			return
		}
		if sv.close {
			c.log.WriteString("-- closed after the reply\n")
			return
		}
	}
}

// command answers one command line; false when the connection ends.
func (sv *ivUpServer) command(l string) bool {
	c := sv.c
	verb, arg, _ := strings.Cut(l, " ")
	event := verb
	if verb == "HELO" {
		event = "EHLO"
	}
	if sv.state == ivUpRefused && verb != "QUIT" {
		c.violate("%q after a refused banner", l)
		sv.reply(503, "5.5.1", "Error: only QUIT")
		return true
	}
	at := event
	if verb == "RCPT" {
		at = l
	}
	if answered, gone := sv.fire(event, at); gone {
		return false
	} else if answered {
		return true
	}
	switch verb {
	case "EHLO", "HELO":
		if sv.state != ivUpGreet {
			c.violate("greeting out of place: %q", l)
		}
		sv.state = ivUpReady
		if verb == "HELO" {
			sv.reply(250, "", sv.host)
			break
		}
		ehlo := "250-" + sv.host + "\r\n250-PIPELINING\r\n250-SIZE 100000000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
		if sv.u.xclient {
			ehlo += "250-XCLIENT NAME ADDR PORT PROTO HELO\r\n"
		}
		if sv.u.plain {
			sv.write(ehlo + "250 HELP\r\n")
		} else {
			sv.write(ehlo + "250 ENHANCEDSTATUSCODES\r\n")
		}
	case "XCLIENT":
		if !sv.u.xclient || sv.state != ivUpReady && sv.state != ivUpGreet {
			c.violate("XCLIENT out of place: %q", l)
		}
		sv.state = ivUpGreet
		sv.reply(220, "", sv.host+" ESMTP")
	case "MAIL":
		from, ok := ivPath(arg, "FROM:")
		if sv.state != ivUpReady || !ok {
			c.violate("MAIL out of place or malformed: %q", l)
			sv.reply(503, "5.5.1", "Error: bad sequence")
			break
		}
		sv.state = ivUpMail
		c.cur = &ivUpTx{conn: c, from: from, codes: map[string]int{}, accepted: map[string]bool{}}
		c.txs = append(c.txs, c.cur)
		sv.reply(250, "2.1.0", "Ok")
	case "RCPT":
		addr, ok := ivPath(arg, "TO:")
		if c.cur == nil || !ok {
			c.violate("RCPT out of place or malformed: %q", l)
			sv.reply(503, "5.5.1", "Error: need MAIL command")
			break
		}
		tx := c.cur
		tx.rcpts = append(tx.rcpts, addr)
		switch {
		case strings.HasPrefix(addr, "rej"):
			tx.codes[addr] = 550
			sv.reply(550, "5.1.1", "<"+addr+">: Recipient address rejected")
		case strings.HasPrefix(addr, "tmp"):
			tx.codes[addr] = 450
			sv.reply(450, "4.2.1", "<"+addr+">: Mailbox busy")
		default:
			tx.codes[addr], tx.accepted[addr] = 250, true
			sv.reply(250, "2.1.5", "Ok")
		}
	case "DATA":
		tx := c.cur
		if tx == nil || len(tx.accepted) == 0 {
			c.violate("DATA without an accepted recipient")
			sv.reply(554, "5.5.1", "Error: no valid recipients")
			break
		}
		tx.seq354 = sv.u.seq.Add(1)
		sv.reply(354, "", "End data with <CR><LF>.<CR><LF>")
		return sv.data(tx)
	case "RSET":
		if c.cur != nil {
			c.cur.end, c.cur = "rset", nil
		}
		if sv.state != ivUpGreet {
			sv.state = ivUpReady
		}
		sv.reply(250, "2.0.0", "Ok")
	case "NOOP":
		sv.reply(250, "2.0.0", "Ok")
	case "QUIT":
		if c.cur != nil {
			c.cur.end, c.cur = "quit", nil
		}
		sv.reply(221, "2.0.0", "Bye")
		return false
	default:
		c.violate("command willi does not send: %q", l)
		sv.reply(502, "5.5.1", "Error: command not implemented")
	}
	return true
}

// data reads one message to its final dot, undoing dot-stuffing, then
// answers it; false when the connection ends.
func (sv *ivUpServer) data(tx *ivUpTx) bool {
	c := sv.c
	var body strings.Builder
	first := true
	for {
		sv.conn.SetReadDeadline(time.Now().Add(ivWait))
		l, err := sv.r.ReadString('\n')
		if err != nil {
			c.log.WriteString(fmt.Sprintf("W: (%d octets of message, then %v)\n", body.Len()+len(l), err))
			c.lose("eof in data")
			return false
		}
		if !strings.HasSuffix(l, "\r\n") {
			c.violate("bare LF in message data")
		}
		if l == ".\r\n" {
			break
		}
		body.WriteString(strings.TrimPrefix(l, "."))
		if first {
			first = false
			if _, gone := sv.fire("middata", "middata"); gone {
				c.log.WriteString(fmt.Sprintf("W: (%d octets of message)\n", body.Len()))
				return false
			}
		}
	}
	c.log.WriteString(fmt.Sprintf("W: (%d octets of message)\nW: .\r\n", body.Len()))
	tx.gotDot, tx.body = true, body.String()
	if k := sv.r.Buffered(); k > 0 {
		b, _ := sv.r.Peek(k)
		c.violate("%q sent after the end of data, before its reply", b)
	}
	if answered, gone := sv.fire("dot", "dot"); gone {
		return false
	} else if answered {
		tx.dotCode = sv.c.markers[fmt.Sprintf("[u%d.%d]", c.n, c.replies)]
		tx.end, c.cur = "dot", nil
		sv.state = ivUpReady
		return true
	}
	tx.dotCode = 250
	tx.end, c.cur = "dot", nil
	sv.state = ivUpReady
	sv.reply(250, "2.0.0", "Ok: queued")
	return true
}

// ivPath is the address of "FROM:<addr>" or "TO:<addr>", parameters cut.
func ivPath(arg, prefix string) (string, bool) {
	rest, ok := strings.CutPrefix(arg, prefix)
	if !ok || !strings.HasPrefix(rest, "<") {
		return "", false
	}
	addr, _, ok := strings.Cut(rest[1:], ">")
	return addr, ok
}
