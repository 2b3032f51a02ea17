package main

import (
	"fmt"
	"math/rand/v2"
	"strings"
)

// The generator of TestTransactionInvariant and FuzzTransaction: a client
// script (commands, how they are grouped into writes) and the faults the
// upstreams inject, drawn from a picker so that a seed or fuzz bytes
// reproduce the same session.

// ivPicker draws the generator's choices.
type ivPicker interface {
	intn(n int) int // in [0, n)
}

// ivRandPicker draws from a seeded PCG: TestTransactionInvariant.
type ivRandPicker struct{ r *rand.Rand }

func newIVRandPicker(seed uint64) *ivRandPicker {
	return &ivRandPicker{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

func (p *ivRandPicker) intn(n int) int { return p.r.IntN(n) }

// ivBytePicker draws from fuzz input; once it is used up every choice is 0,
// the most ordinary one, so any input gives a complete session.
type ivBytePicker struct{ b []byte }

func (p *ivBytePicker) intn(n int) int {
	if len(p.b) == 0 || n <= 1 {
		return 0
	}
	v := int(p.b[0])
	p.b = p.b[1:]
	if n > 256 && len(p.b) > 0 {
		v = v<<8 | int(p.b[0])
		p.b = p.b[1:]
	}
	return v % n
}

// chance is true with probability num/den.
func chance(p ivPicker, num, den int) bool { return p.intn(den) < num }

// ivCmdKind is what a client command is, for the oracle.
type ivCmdKind int

const (
	ivGreet ivCmdKind = iota // EHLO or HELO
	ivStartTLS
	ivMail
	ivRcpt
	ivData // DATA; its message follows after a 354
	ivDot  // the message and its end of data (only in the transcript)
	ivRset
	ivNoop
	ivQuit
)

// ivCmd is one client command.
type ivCmd struct {
	kind  ivCmdKind
	line  string
	addr  string // RCPT: the address; "" when the command does not parse as one
	from  string // MAIL: the reverse path
	msg   string // DATA: the message as sent, dot-stuffed, without the final dot
	plain string // DATA: the message as the upstream must store it
}

// ivFault is one injected upstream fault: on the dial-th connection willi
// opens (from 0), at the nth occurrence (from 1) of event, do kind.
type ivFault struct {
	dial  int
	event string // banner EHLO XCLIENT MAIL RCPT DATA middata dot RSET
	nth   int
	kind  string // 421 4xx 5xx close reset stall garbage after
}

func (f ivFault) String() string {
	return fmt.Sprintf("dial %d: %s at %s #%d", f.dial, f.kind, f.event, f.nth)
}

// ivScript is one generated session.
type ivScript struct {
	seed    string    // how to reproduce it
	xclient bool      // the upstreams offer XCLIENT
	plain   bool      // the upstreams do not offer ENHANCEDSTATUSCODES
	fanout  bool      // split_recipients = "fanout" (else the default, defer)
	groups  [][]ivCmd // each group is one write (RFC 2920 pipelining)
	faults  []ivFault
}

func (s *ivScript) commands() int {
	n := 0
	for _, g := range s.groups {
		n += len(g)
	}
	return n
}

func (s *ivScript) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %s, upstreams offer XCLIENT: %v, ENHANCEDSTATUSCODES: %v, fanout: %v\n", s.seed, s.xclient, !s.plain, s.fanout)
	for _, f := range s.faults {
		fmt.Fprintf(&b, "fault: %s\n", f)
	}
	for _, g := range s.groups {
		for i, c := range g {
			sep := "  "
			if len(g) > 1 {
				sep = "| " // one write
				if i == 0 {
					sep = "+ "
				}
			}
			fmt.Fprintf(&b, "%s%s\n", sep, c.line)
		}
	}
	return b.String()
}

// Routes of the generated recipients (the CSV written by ivEnv).
const (
	ivDomain1   = "a.test"       // up1.test:25
	ivDomain2   = "b.test"       // up2.test:25
	ivUnrouted  = "nowhere.test" // no route: 550 5.7.1
	ivMaxTx     = 4
	ivMaxRcpts  = 5
	ivUpstream1 = "up1.test:25"
	ivUpstream2 = "up2.test:25"
)

// Fault kinds per event. "after" answers normally then closes: the kept
// connection dies while idle.
var (
	ivEvents     = []string{"RCPT", "MAIL", "DATA", "dot", "middata", "banner", "EHLO", "XCLIENT", "RSET", "RCPT", "RCPT"} // RCPT most: where recipients are lost
	ivKinds      = []string{"421", "close", "4xx", "5xx", "reset", "garbage", "stall"}
	ivDataKinds  = []string{"421", "close", "reset", "garbage", "stall"}
	ivAfterKinds = []string{"after", "421", "close", "4xx", "5xx", "reset", "stall"}
)

// ivGenerate draws one session.
func ivGenerate(p ivPicker, seed string, tls bool) *ivScript {
	s := &ivScript{seed: seed, xclient: p.intn(3) != 0}
	var cmds []ivCmd
	greet := func() {
		if p.intn(8) == 7 {
			cmds = append(cmds, ivCmd{kind: ivGreet, line: "HELO client.test"})
		} else {
			cmds = append(cmds, ivCmd{kind: ivGreet, line: "EHLO client.test"})
		}
	}
	greet()
	if tls && cmds[0].line[0] == 'E' && p.intn(6) == 5 {
		cmds = append(cmds, ivCmd{kind: ivStartTLS, line: "STARTTLS"})
		greet()
	}
	rcpt := 0
	ntx := 1 + p.intn(ivMaxTx)
	for t := 0; t < ntx; t++ {
		from := fmt.Sprintf("t%d@client.test", t)
		cmds = append(cmds, ivCmd{kind: ivMail, line: "MAIL FROM:<" + from + ">", from: from})
		nr := 1 + p.intn(ivMaxRcpts)
		for r := 0; r < nr; r++ {
			rcpt++
			var local, domain string
			switch k := p.intn(20); {
			case k < 10:
				local, domain = "r", ivDomain1
			case k < 14:
				local, domain = "r", ivDomain2
			case k < 16:
				local, domain = "x", ivUnrouted
			case k < 17:
				local, domain = "rej", ivDomain1 // the upstream refuses it: 550
			case k < 18:
				local, domain = "tmp", ivDomain1 // the upstream defers it: 450
			case k < 19:
				local, domain = "rej", ivDomain2
			default:
				// Not an address: 501, and not part of the log line.
				cmds = append(cmds, ivCmd{kind: ivRcpt, line: fmt.Sprintf("RCPT TO:bad%d@%s", rcpt, ivDomain1)})
				continue
			}
			addr := fmt.Sprintf("%s%d@%s", local, rcpt, domain)
			cmds = append(cmds, ivCmd{kind: ivRcpt, line: "RCPT TO:<" + addr + ">", addr: addr})
			if p.intn(12) == 11 {
				cmds = append(cmds, ivCmd{kind: ivNoop, line: "NOOP"})
			}
		}
		switch k := p.intn(16); {
		case k < 12:
			cmds = append(cmds, ivMessage(p, t))
			if p.intn(8) == 7 {
				cmds = append(cmds, ivCmd{kind: ivRset, line: "RSET"})
			}
		case k < 14:
			cmds = append(cmds, ivCmd{kind: ivRset, line: "RSET"})
		default:
			greet() // a second EHLO/HELO ends the transaction
		}
	}
	if p.intn(8) != 7 {
		cmds = append(cmds, ivCmd{kind: ivQuit, line: "QUIT"})
	}

	// Groups: one command per write, or pipelined up to a command that
	// must end a group (RFC 2920 §3.1; STARTTLS, RFC 3207 §4.2).
	pipelined := p.intn(3) != 0
	var g []ivCmd
	for _, c := range cmds {
		g = append(g, c)
		last := !pipelined || p.intn(6) == 5
		switch c.kind {
		case ivGreet, ivStartTLS, ivData, ivNoop, ivQuit:
			last = true
		}
		if last {
			s.groups = append(s.groups, g)
			g = nil
		}
	}
	if len(g) > 0 {
		s.groups = append(s.groups, g)
	}

	// Faults: none, one or two, mostly on the first connections.
	for n := []int{0, 1, 1, 1, 1, 2}[p.intn(6)]; n > 0; n-- {
		f := ivFault{dial: []int{0, 0, 0, 1, 1, 2}[p.intn(6)], nth: []int{1, 1, 1, 2, 2, 3}[p.intn(6)]}
		if len(s.faults) > 0 && s.faults[0].dial == f.dial {
			f.dial++ // one fault per connection
		}
		f.event = ivEvents[p.intn(len(ivEvents))]
		switch f.event {
		case "middata":
			f.kind = ivDataKinds[p.intn(len(ivDataKinds))]
		case "dot", "RSET":
			f.kind = ivAfterKinds[p.intn(len(ivAfterKinds))]
		default:
			f.kind = ivKinds[p.intn(len(ivKinds))]
		}
		if f.kind == "stall" && p.intn(3) != 0 {
			f.kind = "close" // stalls cost a timeout each: keep them rare
		}
		if f.event == "RCPT" && p.intn(3) == 2 {
			f.nth++ // a later RCPT: after more recipients were accepted
		}
		s.faults = append(s.faults, f)
	}
	// Drawn last, so that a shorter input keeps its meaning.
	s.plain = p.intn(4) == 3
	s.fanout = p.intn(2) == 1
	return s
}

// ivMessage is the DATA command of transaction t with its message: a few
// lines, some that need dot-stuffing, sometimes larger than one write.
func ivMessage(p ivPicker, t int) ivCmd {
	var plain strings.Builder
	fmt.Fprintf(&plain, "Subject: t%d\r\nX-Tx: t%d\r\n\r\n", t, t)
	for i, n := 0, 1+p.intn(4); i < n; i++ {
		switch p.intn(4) {
		case 0:
			plain.WriteString(".leading dot\r\n")
		case 1:
			plain.WriteString("..\r\n")
		default:
			fmt.Fprintf(&plain, "line %d of message t%d\r\n", i, t)
		}
	}
	if p.intn(10) == 9 {
		plain.WriteString(strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n", 2048))
	}
	var stuffed strings.Builder
	for _, l := range strings.SplitAfter(plain.String(), "\r\n") {
		if strings.HasPrefix(l, ".") {
			stuffed.WriteByte('.')
		}
		stuffed.WriteString(l)
	}
	return ivCmd{kind: ivData, line: "DATA", msg: stuffed.String(), plain: plain.String()}
}
