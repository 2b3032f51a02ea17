package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// phase is where the client is in the dialogue; the dispatcher checks it
// for every command, in one place.
type phase int

const (
	phaseGreet phase = iota // banner sent, no EHLO/HELO yet
	phaseReady              // greeted, no transaction
	phaseMail               // MAIL accepted: a transaction (s.tx) is open
)

// clientBufferSize is the client reader's buffer. DATA is relayed one
// buffer at a time, so it sets the read and write sizes of the relay: 128
// KiB takes a 20 MB message in a quarter fewer CPU milliseconds than 32 KiB.
// Pages the reads never reach are never touched: commands use the first.
const clientBufferSize = 128 << 10

// Session is one client connection, from banner to close.
type Session struct {
	cfg   *Config
	log   *slog.Logger
	debug bool
	ctx   context.Context
	start time.Time
	end   time.Time // the session's overall deadline

	conn net.Conn
	r    *bufio.Reader
	wmu  sync.Mutex // the signal handler writes its 421 under it too
	w    *bufio.Writer
	// signalled: a signal ended the session; guarded by wmu.
	signalled bool

	// greeted runs once the banner is out: set-up the banner need not
	// wait for (signal handling starts a thread, about 0.2 ms).
	greeted func()

	clientIP        net.IP
	clientPort      int
	localAddr       net.Addr
	clientNameCache string

	// Seams for tests; real network and DNS by default.
	dial       func(ctx context.Context, network, addr string) (net.Conn, error)
	lookupName func(ctx context.Context, ip net.IP) string

	phase   phase
	helo    string
	esmtp   bool
	tlsInfo string // "" until the client's STARTTLS completed
	errors  int    // consecutive protocol errors
	refused int    // errors and refused recipients since the last delivered message
	closing bool   // end the session after the current reply
	reason  string // why the session ended, for the log

	chain    *Chain
	tx       *transaction // nil outside a mail transaction
	idle     []*upstream  // connections kept for the next transaction
	messages int
	stop     context.CancelFunc // ends the session from a signal
}

// newSession prepares a session on conn; nothing is read or written yet.
func newSession(cfg *Config, conn net.Conn, log *slog.Logger) *Session {
	s := &Session{
		cfg:   cfg,
		log:   log,
		debug: log.Enabled(context.Background(), slog.LevelDebug),
		start: time.Now(),
		conn:  conn,
		r:     bufio.NewReaderSize(conn, clientBufferSize),
		w:     bufio.NewWriterSize(conn, 4096),
	}
	s.ctx, s.stop = context.WithCancel(context.Background())
	s.end = s.start.Add(cfg.SessionTimeout.Duration)
	s.dial = (&net.Dialer{}).DialContext
	s.lookupName = func(ctx context.Context, ip net.IP) string { return clientName(ctx, net.DefaultResolver, ip) }
	return s
}

// deadline is now+d, but never past the session's overall deadline.
func (s *Session) deadline(d time.Duration) time.Time {
	t := time.Now().Add(d)
	if t.After(s.end) {
		return s.end
	}
	return t
}

// finalReplyGrace is how long the reply that ends a session may take to
// write once session_timeout has passed (the 421 that says so).
const finalReplyGrace = 2 * time.Second

// writeDeadline bounds a write to the client like a read (command_timeout,
// cut at the session's end); past the end, the closing reply still gets a
// moment to go out.
func (s *Session) writeDeadline() time.Time {
	t := s.deadline(s.cfg.CommandTimeout.Duration)
	if !t.After(time.Now()) {
		return time.Now().Add(finalReplyGrace)
	}
	return t
}

// write queues a reply; replies go out in order, flushed before any read
// that would block (RFC 2920).
func (s *Session) write(r *Reply) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.signalled {
		return // the 421 that says so was the last reply
	}
	buf := r.appendTo(make([]byte, 0, 128))
	if s.debug {
		s.log.Debug("c<", "reply", strings.TrimSuffix(string(buf), "\r\n"))
	}
	s.conn.SetWriteDeadline(s.writeDeadline())
	s.w.Write(buf)
}

func (s *Session) flush() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.signalled {
		return errSignalled
	}
	s.conn.SetWriteDeadline(s.writeDeadline())
	return s.w.Flush()
}

// hangup ends the session after a read or write failure: a 421 when the
// client timed out, nothing when it went away.
func (s *Session) hangup(err error) *Reply {
	s.closing = true
	switch {
	case s.isSignalled():
		s.reason = "signal"
	case err == nil:
		s.reason = "tls-failed"
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.reason = "timeout"
		return replyTimeout
	case err == errNonSMTP:
		s.reason = "non-smtp"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		s.reason = "client-closed"
	default:
		s.reason = "client-error"
		s.log.Debug("client connection error", "err", err)
	}
	return nil
}

// errSignalled is every write's error once a signal ended the session.
var errSignalled = errors.New("session ended by a signal")

// terminate ends the session from a signal (systemd stop, RuntimeMaxSec):
// the client is told 421 and nothing after it, and every wait of the
// session's own goroutine, on the client or an upstream, fails at once, so
// that it aborts what is in progress (an upstream in DATA gets no end of
// data), logs the transaction and the session, and returns. Should it not
// within exitGrace, the process exits anyway.
func (s *Session) terminate() {
	s.wmu.Lock()
	if !s.signalled {
		s.log.Info("signal, closing session", "client", s.clientString())
		s.conn.SetWriteDeadline(time.Now().Add(finalReplyGrace))
		s.w.Write(replyShutdown.appendTo(nil))
		s.w.Flush()
		s.signalled = true
		s.conn.SetDeadline(time.Now())
	}
	s.wmu.Unlock()
	s.stop()
	time.AfterFunc(exitGrace, func() { os.Exit(0) })
}

// exitGrace bounds how long a signalled session may take to wind down.
const exitGrace = 5 * time.Second

func (s *Session) isSignalled() bool {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.signalled
}

// serve runs the dialogue until the client quits, goes away or is sent away.
func (s *Session) serve() {
	defer s.finish()
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("internal error", "panic", p)
			s.reason = "internal-error"
			s.write(replyInternal)
			s.flush()
		}
	}()
	if s.earlyTalker() {
		return
	}
	s.write(&Reply{Code: 220, Text: []string{s.cfg.Hostname + " ESMTP"}})
	if s.greeted != nil {
		s.flush()
		s.greeted()
	}
	for !s.closing {
		line, rep, err := s.readCommand()
		if err != nil {
			rep = s.hangup(err)
		} else if rep == nil {
			rep = s.dispatch(line)
		} else {
			rep = s.countError(rep)
		}
		if rep != nil {
			s.write(rep)
			if rep.closes() {
				s.closing = true
			}
		}
	}
	s.flush()
}

// earlyTalker refuses a client that talks before the banner (RFC 5321
// §4.3.1: the client waits for it), and an untrusted PROXY header.
func (s *Session) earlyTalker() bool {
	if s.r.Buffered() == 0 && !inputPending(s.conn) {
		return false
	}
	s.conn.SetReadDeadline(s.deadline(s.cfg.CommandTimeout.Duration))
	b, _ := s.r.Peek(1)
	s.conn.SetReadDeadline(time.Time{})
	if len(b) == 0 {
		return false
	}
	b, _ = s.r.Peek(s.r.Buffered())
	if looksLikeProxyHeader(b) {
		s.log.Warn("PROXY header from an untrusted peer refused", "client", s.clientString())
		s.reason = "untrusted-proxy"
		return true
	}
	s.reason = "early-talker"
	s.write(replySyncError)
	s.flush()
	return true
}

// errNonSMTP ends a session whose client sends bytes no SMTP command starts
// with.
var errNonSMTP = errors.New("non-SMTP input")

// readCommand reads one command line. It returns a reply instead of a line
// when the line is unusable; err when the client is gone or silent.
func (s *Session) readCommand() (string, *Reply, error) {
	if s.r.Buffered() == 0 {
		if err := s.flush(); err != nil {
			return "", nil, err
		}
	}
	s.conn.SetReadDeadline(s.deadline(s.commandTimeout()))
	first, err := s.r.Peek(1)
	if err != nil {
		return "", nil, err
	}
	if c := first[0]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '\r' || c == '\n') {
		// Not SMTP (a TLS ClientHello, binary): close at once, without
		// waiting for a line end that may never come.
		s.log.Info("non-SMTP input, closing", "first_octet", int(c))
		return "", nil, errNonSMTP
	}
	line, err := s.r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		for err == bufio.ErrBufferFull {
			_, err = s.r.ReadSlice('\n')
		}
		if err != nil {
			return "", nil, err
		}
		return "", replyLineTooLong, nil
	}
	if err != nil {
		return "", nil, err
	}
	if len(line) > 512 {
		return "", replyLineTooLong, nil
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return "", replyBareLF, nil
	}
	line = line[:len(line)-2]
	for _, c := range line {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return "", replyBadChars, nil
		}
	}
	if s.debug {
		s.log.Debug("c>", "line", redactCommand(string(line)))
	}
	return string(line), nil, nil
}

// redactCommand keeps AUTH secrets out of the debug transcript.
func redactCommand(l string) string {
	if len(l) >= 4 && strings.EqualFold(l[:4], "AUTH") {
		return "AUTH <redacted>"
	}
	return l
}

// command is one entry of the dispatcher's table.
type command struct {
	fn func(s *Session, arg string) *Reply
	// seq returns the reply for a command out of sequence, nil when it is
	// allowed in the current phase.
	seq func(p phase) *Reply
}

func needNoTransaction(p phase) *Reply {
	switch p {
	case phaseGreet:
		return replyBadSequenceNoHelo
	case phaseMail:
		return replyNestedMail
	}
	return nil
}

func needMail(p phase) *Reply {
	if p == phaseGreet || p == phaseReady {
		return replyNeedMail
	}
	return nil
}

func outsideTransaction(p phase) *Reply {
	if p == phaseMail {
		return reply(503, "5.5.1", "Error: MAIL transaction in progress")
	}
	return nil
}

var commands map[string]command

func init() {
	commands = map[string]command{
		"EHLO":     {fn: (*Session).cmdEhlo},
		"HELO":     {fn: (*Session).cmdHelo},
		"MAIL":     {fn: (*Session).cmdMail, seq: needNoTransaction},
		"RCPT":     {fn: (*Session).cmdRcpt, seq: needMail},
		"DATA":     {fn: (*Session).cmdData, seq: needMail},
		"RSET":     {fn: (*Session).cmdRset},
		"NOOP":     {fn: (*Session).cmdNoop},
		"HELP":     {fn: (*Session).cmdHelp},
		"VRFY":     {fn: (*Session).cmdVrfy},
		"EXPN":     {fn: fixed(reply(502, "5.5.1", "Error: EXPN not implemented"))},
		"QUIT":     {fn: (*Session).cmdQuit},
		"STARTTLS": {fn: (*Session).cmdStartTLS, seq: outsideTransaction},
		"AUTH":     {fn: fixed(replyNoAuth)},
		"XCLIENT":  {fn: fixed(reply(550, "5.7.0", "Error: insufficient authorization"))},
		"XFORWARD": {fn: fixed(reply(550, "5.7.0", "Error: insufficient authorization"))},
		"BDAT":     {fn: fixed(replyBDAT)},
		"TURN":     {fn: fixed(replyNotImplemented)},
		"ETRN":     {fn: fixed(replyNotImplemented)},
	}
	for _, verb := range []string{"GET", "POST", "HEAD", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"} {
		commands[verb] = command{fn: (*Session).cmdHTTP}
	}
}

func fixed(r *Reply) func(*Session, string) *Reply {
	return func(*Session, string) *Reply { return r }
}

// dispatch runs one command line and returns the reply to send.
func (s *Session) dispatch(line string) *Reply {
	verb, arg, _ := strings.Cut(line, " ")
	// Verbs are ASCII (RFC 5321 §2.4): strings.ToUpper would also turn
	// "ı" into "I" and "ſ" into "S", and "MAıL" would pass for MAIL.
	verb = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' {
			return r - 'a' + 'A'
		}
		return r
	}, verb)
	cmd, ok := commands[verb]
	if !ok && len(verb) > 1 && verb[len(verb)-1] == ':' {
		// A header line ("Host: ...", "User-Agent: ...") as a command:
		// HTTP, or a message sent without DATA's go-ahead.
		return s.cmdHTTP(arg)
	}
	if !ok {
		s.log.Debug("unknown command", "verb", strconvQuote(verb, 10))
		return s.countError(replyUnknownCommand)
	}
	if cmd.seq != nil {
		if r := cmd.seq(s.phase); r != nil {
			if verb == "DATA" {
				r = s.dataRefused(r, false)
			}
			return s.countError(r)
		}
	}
	return s.countError(cmd.fn(s, strings.TrimLeft(arg, " ")))
}

// countError counts willi's own protocol errors (syntax and sequence) in a
// row, and every 5xx (refused recipients included) since the last message
// delivered; past max_errors in a row or hard_error_limit in all (Postfix's
// smtpd_hard_error_limit) the client is sent away: a harvester walking
// addresses is cut off. Temporary refusals (4xx) do not count: they are
// faults of ours or of an upstream, or a request to send again.
func (s *Session) countError(r *Reply) *Reply {
	if r == nil {
		return nil
	}
	switch {
	case r.Code/100 == 2 || r.Code/100 == 3:
		s.errors = 0
	case r.Code >= 500 && r.Code <= 504 || r.Code == 555:
		s.errors++
	}
	if r.Code/100 == 5 && !r.closes() {
		s.refused++
	}
	switch {
	case r.closes():
	case s.errors >= s.cfg.MaxErrors:
		s.write(r)
		s.reason = "too-many-errors"
		return replyTooManyErrors
	case s.refused >= s.cfg.HardErrorLimit:
		s.write(r)
		s.reason = "hard-error-limit"
		s.log.Info("hard error limit reached, closing", "client", s.clientString(), "errors", s.refused)
		return replyTooManyRefused
	}
	return r
}

func strconvQuote(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	return strconv.Quote(s)
}

// EHLO (RFC 5321 §4.1.1.1).
func (s *Session) cmdEhlo(arg string) *Reply {
	if r := s.greet(arg, true); r != nil {
		return r
	}
	lines := []string{s.cfg.Hostname, "PIPELINING", "SIZE " + strconv.FormatInt(s.cfg.MaxMessageSize, 10),
		"8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"}
	if s.cfg.TLS != nil && s.tlsInfo == "" {
		lines = append(lines, "STARTTLS")
	}
	return &Reply{Code: 250, Text: lines}
}

// HELO (RFC 5321 §4.1.1.1).
func (s *Session) cmdHelo(arg string) *Reply {
	if r := s.greet(arg, false); r != nil {
		return r
	}
	return &Reply{Code: 250, Text: []string{s.cfg.Hostname}}
}

// greet records the client's name. Any printable UTF-8 is accepted, as
// Postfix does; it is only ever forwarded xtext-encoded (XCLIENT HELO=) or
// as the greeting after XCLIENT, so it must be text an upstream accepts.
// A greeting resets the transaction (RFC 5321 §4.1.4) and lets go of the
// upstream connections: what they were told of the client (XCLIENT HELO)
// is stale.
func (s *Session) greet(arg string, esmtp bool) *Reply {
	arg = strings.TrimSpace(arg)
	if arg == "" {
		if esmtp {
			return reply(501, "5.5.4", "Syntax: EHLO hostname")
		}
		return reply(501, "5.5.4", "Syntax: HELO hostname")
	}
	if !utf8.ValidString(arg) || strings.ContainsAny(arg, "\t\x7f") {
		return reply(501, "5.5.2", "Error: invalid HELO name")
	}
	s.dropTx()
	s.endUpstreams()
	s.helo, s.esmtp, s.phase = arg, esmtp, phaseReady
	return nil
}

// MAIL (RFC 5321 §4.1.1.2): answered by willi; nothing goes upstream until
// the first RCPT is routed.
func (s *Session) cmdMail(arg string) *Reply {
	p, r := parsePathArg(arg, "FROM:", true)
	if r != nil {
		return r
	}
	e := envelope{from: p.addr}
	for _, prm := range p.params {
		if !s.esmtp {
			return reply(555, "5.5.4", "Error: parameters need EHLO")
		}
		switch prm.key {
		case "SIZE":
			n, err := strconv.ParseInt(prm.value, 10, 64)
			if err != nil || n < 0 || len(prm.value) > 20 {
				return reply(501, "5.5.4", "Error: bad SIZE parameter")
			}
			e.size = n
		case "BODY":
			switch v := strings.ToUpper(prm.value); v {
			case "7BIT", "8BITMIME":
				e.body = v
			case "BINARYMIME":
				return reply(504, "5.5.4", "Error: BINARYMIME not supported")
			default:
				return reply(501, "5.5.4", "Error: bad BODY parameter")
			}
		case "SMTPUTF8":
			if prm.value != "" {
				return reply(501, "5.5.4", "Error: SMTPUTF8 takes no value")
			}
			e.utf8 = true
		default:
			return reply(555, "5.5.4", "Error: unsupported MAIL parameter %s", prm.key)
		}
	}
	if p.utf8 && !e.utf8 {
		return reply(553, "5.6.7", "Error: non-ASCII address needs SMTPUTF8")
	}
	if e.size > s.cfg.MaxMessageSize {
		return replyMessageTooBig
	}
	s.tx = newTransaction(e)
	s.phase = phaseMail
	return reply(250, "2.1.0", "Ok")
}

// RCPT (RFC 5321 §4.1.1.3): route the recipient, open or reuse the
// upstream transaction for its route, then relay the upstream's verdict.
func (s *Session) cmdRcpt(arg string) *Reply {
	p, r := parsePathArg(arg, "TO:", false)
	if r != nil {
		return r
	}
	if len(p.params) > 0 {
		return reply(555, "5.5.4", "Error: unsupported RCPT parameter %s", p.params[0].key)
	}
	r = s.addRecipient(p)
	s.tx.answered(p.addr, r)
	if r.Code/100 != 2 {
		s.log.Info("recipient refused", "rcpt", p.addr, "reply", r.Error())
	}
	return r
}

// addRecipient decides one recipient's reply.
func (s *Session) addRecipient(p pathArg) *Reply {
	tx := s.tx
	if tx.void != nil {
		return tx.void
	}
	if p.utf8 && !tx.utf8 {
		return reply(553, "5.6.7", "Error: non-ASCII address needs SMTPUTF8")
	}
	if tx.accepted() >= s.cfg.MaxRecipients {
		return replyTooManyRcpts
	}
	route, r := s.route(p.addr)
	if r != nil {
		return r
	}
	l := tx.legFor(route.ID())
	if l == nil {
		if len(tx.legs) > 0 && s.cfg.SplitRecipients != splitFanout {
			s.log.Info("recipient deferred to a new transaction", "rcpt", p.addr, "upstream", route.ID(), "transaction_upstream", tx.legs[0].up.routeID)
			return replyOtherUpstream
		}
		if l, r = s.openLeg(route); r != nil {
			return r
		}
	}
	if p.utf8 && !l.up.has("SMTPUTF8") {
		return reply(553, "5.6.7", "Error: the upstream for this recipient does not support SMTPUTF8")
	}
	rep, err := l.up.rcpt(p.addr)
	if err != nil {
		return tx.lose(l, faultReply(err))
	}
	if rep.Code/100 == 2 {
		l.accepted = append(l.accepted, p.addr)
	}
	return rep
}

// route looks the recipient up in the mapping chain.
func (s *Session) route(addr string) (Route, *Reply) {
	if s.chain == nil {
		ch, err := newChain(s.cfg)
		if err != nil {
			s.log.Error("mapping setup failed", "err", err)
			return Route{}, replyBadRoute
		}
		s.chain = ch
	}
	ctx, cancel := context.WithTimeout(s.ctx, lookupTimeout)
	defer cancel()
	route, err := s.chain.Route(ctx, addr, s.cfg.RecipientDelimiter)
	var le *lookupError
	var be *badRouteError
	switch {
	case err == nil:
		s.log.Debug("routed", "rcpt", addr, "upstream", route.ID(), "mapping", route.Mapping, "key", route.Key)
		return route, nil
	case errors.Is(err, errNoRoute):
		return Route{}, reply(550, "5.7.1", "<%s>: Relay access denied", addr)
	case errors.As(err, &be):
		s.log.Error("mapping returned a bad server", "err", err)
		return Route{}, replyBadRoute
	case errors.As(err, &le):
		s.log.Error("mapping lookup failed", "err", err)
		return Route{}, replyLookupFailed
	}
	s.log.Error("routing failed", "err", err)
	return Route{}, replyLookupFailed
}

// lookupTimeout bounds one recipient's walk through the chain.
const lookupTimeout = 10 * time.Second

// openLeg opens the transaction's upstream transaction for route: MAIL on
// a kept connection to that route, else on a new one.
func (s *Session) openLeg(route Route) (*leg, *Reply) {
	// The transaction's own spare connection first (its MAIL was refused
	// there), else one kept from an earlier transaction.
	u := cmp.Or(takeIdle(&s.tx.spare, route.ID()), takeIdle(&s.idle, route.ID()))
	if s.cfg.SplitRecipients != splitFanout {
		s.endUpstreams() // a transaction has one leg: no other kept connection serves it
	}
	for {
		reused := u != nil
		if !reused {
			var r *Reply
			if u, r = s.connect(route); r != nil {
				return nil, r
			}
		}
		rep, err := u.mail(s.tx.envelope)
		if err != nil {
			if reused {
				u = nil
				continue // the kept connection died while idle: one fresh try
			}
			return nil, faultReply(err)
		}
		if rep.Code/100 != 2 {
			s.tx.spare = append(s.tx.spare, u)
			return nil, relayReply(rep, false)
		}
		l := &leg{up: u}
		s.tx.legs = append(s.tx.legs, l)
		return l, nil
	}
}

// takeIdle takes a kept connection to routeID out of conns, or returns nil.
// The others stay for the transaction's other legs (fanout): the end of the
// transaction lets go of the idle ones it did not take.
func takeIdle(conns *[]*upstream, routeID string) *upstream {
	for i, u := range *conns {
		if u.routeID != routeID {
			continue
		}
		*conns = slices.Delete(*conns, i, i+1)
		if u.usable() {
			return u
		}
		u.end()
		return nil
	}
	return nil
}

// connect opens a connection to the route's upstream, handing it what it
// needs to know.
func (s *Session) connect(route Route) (*upstream, *Reply) {
	for _, srv := range route.Servers {
		if s.isOwnAddress(srv) {
			s.log.Error("route points at willi itself", "upstream", srv.String(), "mapping", route.Mapping, "key", route.Key)
			return nil, replyRouteLoop
		}
	}
	return openUpstream(s.ctx, route, upstreamParams{
		hostname: s.cfg.Hostname,
		client: clientFacts{ip: s.clientIP, port: s.clientPort, local: s.localAddr,
			helo: s.helo, esmtp: s.esmtp, tls: s.tlsInfo != "", name: s.name},
		connectTimeout: s.cfg.UpstreamConnectTimeout.Duration,
		commandTimeout: s.cfg.UpstreamCommandTimeout.Duration,
		dataTimeout:    s.cfg.UpstreamDataTimeout.Duration,
		policy:         s.cfg.upstreamPolicy,
		dial:           s.dial,
		log:            s.log,
		debug:          s.debug,
	})
}

// isOwnAddress reports a server that is the address the client connected to.
func (s *Session) isOwnAddress(srv Server) bool {
	la, ok := s.localAddr.(*net.TCPAddr)
	if !ok || la.Port != srv.Port {
		return false
	}
	if ip := net.ParseIP(srv.Host); ip != nil {
		return ip.Equal(la.IP) || la.IP.IsUnspecified()
	}
	return strings.EqualFold(srv.Host, s.cfg.Hostname)
}

func hasNonASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return true
		}
	}
	return false
}

// resetTx ends the transaction (RSET, the end of data): its log line if
// none was written yet, RSET for its upstream transactions. The
// connections it used are kept for the next transaction and, when it used
// any, those it did not are let go: a session keeps no more connections
// than its last transaction to reach an upstream needed.
func (s *Session) resetTx() {
	if s.tx == nil {
		return
	}
	if len(s.tx.legs) > 0 || len(s.tx.spare) > 0 {
		s.endUpstreams()
	}
	s.endTx(func(u *upstream) {
		u.reset()
		if u.usable() {
			s.idle = append(s.idle, u)
		}
	})
}

// dropTx ends the transaction and its upstream connections (a new
// greeting, STARTTLS, the end of the session).
func (s *Session) dropTx() {
	s.endTx((*upstream).end)
}

// endTx logs a transaction that ends without a verdict and hands each
// leg's upstream to done.
func (s *Session) endTx(done func(*upstream)) {
	if s.tx == nil {
		return
	}
	if !s.tx.logged {
		result := "abandoned"
		if s.tx.void != nil {
			result = "void: " + s.tx.void.Error()
		}
		s.logTx(result, 0)
	}
	for _, l := range s.tx.legs {
		done(l.up)
	}
	for _, u := range s.tx.spare {
		done(u)
	}
	s.tx = nil
	if s.phase > phaseReady {
		s.phase = phaseReady
	}
}

// endUpstreams lets go of every kept upstream connection.
func (s *Session) endUpstreams() {
	for _, u := range s.idle {
		u.end()
	}
	s.idle = nil
}

// resetSession forgets everything after STARTTLS (RFC 3207 §4.2).
func (s *Session) resetSession() {
	s.dropTx()
	s.endUpstreams()
	s.helo, s.esmtp, s.phase = "", false, phaseGreet
}

// RSET (RFC 5321 §4.1.1.5).
func (s *Session) cmdRset(arg string) *Reply {
	if arg != "" {
		return reply(501, "5.5.4", "Syntax: RSET")
	}
	s.resetTx()
	return reply(250, "2.0.0", "Ok")
}

func (s *Session) cmdNoop(string) *Reply { return reply(250, "2.0.0", "Ok") }

func (s *Session) cmdHelp(string) *Reply {
	return reply(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT")
}

// VRFY never consults the mapping (security rule 18).
func (s *Session) cmdVrfy(arg string) *Reply {
	if arg == "" {
		return reply(501, "5.5.4", "Syntax: VRFY address")
	}
	return reply(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery")
}

func (s *Session) cmdQuit(arg string) *Reply {
	if arg != "" {
		return reply(501, "5.5.4", "Syntax: QUIT")
	}
	s.reason = "quit"
	return reply(221, "2.0.0", "Bye")
}

func (s *Session) cmdHTTP(string) *Reply {
	s.reason = "http"
	s.log.Info("HTTP request on the SMTP port", "client", s.clientString())
	return replyHTTP
}

func (s *Session) clientString() string {
	if s.clientIP == nil {
		return "unknown"
	}
	return net.JoinHostPort(s.clientIP.String(), strconv.Itoa(s.clientPort))
}

// finish ends the session: the upstreams get QUIT (one inside DATA is
// closed without an end of data), the client connection is closed, and the
// session's line is logged.
func (s *Session) finish() {
	s.dropTx()
	s.endUpstreams()
	if s.chain != nil {
		s.chain.Close()
	}
	s.conn.Close()
	if s.reason == "" {
		s.reason = "client-closed"
	}
	s.log.Info("session", "client", s.clientString(), "helo", s.helo, "tls", orNone(s.tlsInfo),
		"messages", s.messages, "end", s.reason, "duration", time.Since(s.start).Round(time.Millisecond))
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
