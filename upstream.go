package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clientFacts is what an upstream may be told about the client: its address
// (XCLIENT, PROXY header) and its greeting and TLS use.
type clientFacts struct {
	ip    net.IP
	port  int
	local net.Addr // the address the client connected to
	helo  string
	esmtp bool
	tls   bool          // the client's session is in TLS
	name  func() string // forward-confirmed DNS name, looked up when first needed
}

// upstreamParams is everything an upstream connection needs from the
// session that opens it; it reaches back into nothing else.
type upstreamParams struct {
	hostname       string // willi's own name, for EHLO
	client         clientFacts
	connectTimeout time.Duration
	commandTimeout time.Duration
	dataTimeout    time.Duration // the wait for the verdict on a message
	policy         func(Server) UpstreamConfig
	dial           func(ctx context.Context, network, addr string) (net.Conn, error)
	log            *slog.Logger
	debug          bool
}

// upstreamState is where an upstream connection stands.
type upstreamState int

const (
	upReady  upstreamState = iota // greeted, no transaction open
	upMail                        // MAIL accepted: a transaction is open
	upData                        // after its 354: only data and an end of data may follow
	upClosed                      // the connection is gone
)

// upstream is willi's client connection to one server a recipient was
// routed to. Every line it sends is built by willi from parsed fields;
// nothing the client typed goes through raw. It ends one way, end(); a
// fault (no usable reply, a 421) closes it at once and is returned as an
// error whose client reply faultReply gives.
type upstream struct {
	p        upstreamParams
	policy   UpstreamConfig
	conn     net.Conn
	raw      net.Conn // the TCP connection under conn (under TLS)
	r        *bufio.Reader
	server   Server
	routeID  string
	ext      map[string]string    // EHLO keywords (upper case) and their parameters
	banner   string               // the greeting's text
	tlsState *tls.ConnectionState // nil in plain text
	xclient  string               // what became of the client address hand-over
	state    upstreamState
	stop     func() bool // releases the session-end hook on conn
}

// openUpstream connects to the first server of the route that answers with
// a 2xx banner and completes EHLO, STARTTLS and XCLIENT per policy. A server
// that fails is skipped; the last failure is the client's reply.
func openUpstream(ctx context.Context, route Route, p upstreamParams) (*upstream, *Reply) {
	var last *Reply
	for _, srv := range route.Servers {
		u, rep := dialServer(ctx, srv, p)
		if rep == nil {
			u.routeID = route.ID()
			return u, nil
		}
		last = rep
	}
	if last == nil {
		last = replyUpstreamDown
	}
	return nil, last
}

// dialServer connects to one server and sets the session up.
func dialServer(ctx context.Context, srv Server, p upstreamParams) (*upstream, *Reply) {
	dctx, cancel := context.WithTimeout(ctx, p.connectTimeout)
	defer cancel()
	conn, err := p.dial(dctx, "tcp", srv.String())
	if err != nil {
		p.log.Warn("upstream connect failed", "upstream", srv.String(), "err", err)
		return nil, replyUpstreamDown
	}
	// The session's end (a signal) interrupts whatever the connection
	// waits for.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	u := &upstream{p: p, policy: p.policy(srv), conn: conn, raw: conn, r: bufio.NewReaderSize(conn, 4096), server: srv, xclient: "off", stop: stop}
	if k := u.policy.ClientAddress; k == addrProxyV1 || k == addrProxyV2 {
		conn.SetWriteDeadline(time.Now().Add(p.commandTimeout))
		if err := writeProxyHeader(conn, k, p.client); err != nil {
			u.drop()
			p.log.Warn("upstream PROXY header failed", "upstream", srv.String(), "err", err)
			return nil, replyUpstreamDown
		}
		u.xclient = k
	}
	banner, err := u.readReply(p.connectTimeout)
	if err != nil {
		u.drop()
		p.log.Warn("upstream banner failed", "upstream", srv.String(), "err", err)
		return nil, replyUpstreamDown
	}
	u.banner = strings.Join(banner.Text, " / ")
	if banner.Code != 220 {
		u.drop()
		p.log.Warn("upstream refused the connection", "upstream", srv.String(), "reply", banner.Error())
		return nil, replyUpstreamDown
	}
	if rep := u.setup(); rep != nil {
		u.drop()
		return nil, rep
	}
	return u, nil
}

// setup runs EHLO, STARTTLS per policy and XCLIENT per policy.
func (u *upstream) setup() *Reply {
	r, err := u.greet(u.p.hostname, true)
	var closing *Reply
	if errors.As(err, &closing) {
		u.p.log.Warn("upstream closed at EHLO", "upstream", u.server.String(), "reply", closing.Error())
		return replyUpstreamDown // a 421: not serving now, as a 4xx banner
	}
	if err != nil {
		return u.fault("EHLO", err)
	}
	if r.Code != 250 {
		u.p.log.Warn("upstream refused EHLO and HELO", "upstream", u.server.String(), "reply", r.Error())
		if r.Code/100 == 5 {
			return r // a refusal of willi itself: the client learns why
		}
		return replyUpstreamDown
	}
	if rep := u.startTLS(); rep != nil {
		return rep
	}
	if u.policy.ClientAddress == addrXCLIENT {
		return u.sendXCLIENT()
	}
	return nil
}

// readReply reads one reply within timeout; bytes left over after it,
// when nothing else was asked, are unsolicited.
func (u *upstream) readReply(timeout time.Duration) (*Reply, error) {
	u.conn.SetReadDeadline(time.Now().Add(timeout))
	var seen func(string)
	if u.p.debug {
		seen = func(l string) { u.p.log.Debug("u<", "line", l) }
	}
	r, err := readReply(u.r, seen)
	if err != nil {
		return nil, err
	}
	if u.r.Buffered() > 0 {
		return nil, fmt.Errorf("%w: unsolicited bytes after a %d reply", errUpstreamProtocol, r.Code)
	}
	return r, nil
}

// send writes one command line built by willi.
func (u *upstream) send(line string) error {
	if u.p.debug {
		u.p.log.Debug("u>", "line", line)
	}
	u.conn.SetWriteDeadline(time.Now().Add(u.p.commandTimeout))
	_, err := io.WriteString(u.conn, line+"\r\n")
	return err
}

// cmd sends a command and reads its reply. An error means the connection
// is gone (closed here): no usable reply, or a 421, which comes back as the
// client's reply to give.
func (u *upstream) cmd(line string) (*Reply, error) {
	if u.state == upClosed {
		return nil, errUpstreamClosed
	}
	if err := u.send(line); err != nil {
		return nil, u.lose(err)
	}
	r, err := u.readReply(u.p.commandTimeout)
	if err != nil {
		return nil, u.lose(err)
	}
	if r.Code == 421 {
		return nil, u.lose(relayReply(r, false))
	}
	return r, nil
}

// lose closes a connection that failed and returns why.
func (u *upstream) lose(err error) error {
	u.drop()
	u.p.log.Warn("upstream lost", "upstream", u.server.String(), "err", err)
	return err
}

// fault closes the connection for err, logs it as a failure at step, and
// returns the client's reply for it.
func (u *upstream) fault(step string, err error) *Reply {
	u.drop()
	u.p.log.Warn("upstream "+step+" failed", "upstream", u.server.String(), "err", err)
	return faultReply(err)
}

// drop closes the connection without a word: an upstream in DATA thus never
// sees an end of data.
func (u *upstream) drop() {
	if u.state != upClosed {
		u.state = upClosed
		u.stop()
		u.conn.Close()
	}
}

// end is the one way a session lets go of an upstream: QUIT when it can be
// said (not waiting long for the reply), a bare close inside DATA, so that
// a message never completed is never accepted.
func (u *upstream) end() {
	if u.state == upReady || u.state == upMail {
		if u.send("QUIT") == nil {
			u.readReply(2 * time.Second)
		}
	}
	u.drop()
}

// usable reports a connection that can take a new transaction.
func (u *upstream) usable() bool { return u.state == upReady }

// greet sends EHLO name (HELO when esmtp is false or EHLO is refused with
// 5xx) and records the extensions the upstream offers.
func (u *upstream) greet(name string, esmtp bool) (*Reply, error) {
	u.ext = map[string]string{}
	if !esmtp {
		return u.cmd("HELO " + name)
	}
	r, err := u.cmd("EHLO " + name)
	if err != nil {
		return nil, err
	}
	if r.Code == 250 {
		for _, l := range r.Text[1:] {
			k, v, _ := strings.Cut(l, " ")
			u.ext[strings.ToUpper(k)] = v
		}
		return r, nil
	}
	if r.Code/100 != 5 {
		return r, nil
	}
	return u.cmd("HELO " + name)
}

// regreet greets an upstream that greeted anew (after STARTTLS or
// XCLIENT); the capabilities are this greeting's.
func (u *upstream) regreet(name string, esmtp bool) *Reply {
	r, err := u.greet(name, esmtp)
	if err != nil {
		return u.fault("EHLO", err)
	}
	if r.Code != 250 {
		return u.fault("EHLO", fmt.Errorf("%w: greeting refused: %s", errUpstreamProtocol, r.Error()))
	}
	return nil
}

func (u *upstream) has(ext string) bool {
	_, ok := u.ext[ext]
	return ok
}

// envelope is what MAIL FROM carries.
type envelope struct {
	from string
	utf8 bool   // SMTPUTF8 given
	body string // BODY= value, upper case
	size int64  // SIZE= value
}

// mail opens a transaction with the client's MAIL parameters the upstream
// supports, or refuses when the transaction needs an extension it lacks.
// The reply is the client's (relayed); err means the connection is gone.
func (u *upstream) mail(e envelope) (*Reply, error) {
	if e.body == "8BITMIME" && !u.has("8BITMIME") {
		return reply(554, "5.6.3", "Error: the upstream for this recipient does not accept 8-bit MIME"), nil
	}
	if e.utf8 && hasNonASCII(e.from) && !u.has("SMTPUTF8") {
		return reply(553, "5.6.7", "Error: the upstream for this recipient does not support SMTPUTF8"), nil
	}
	var b strings.Builder
	b.WriteString("MAIL FROM:<" + e.from + ">")
	if e.size > 0 && u.has("SIZE") {
		b.WriteString(" SIZE=" + strconv.FormatInt(e.size, 10))
	}
	if e.body != "" && u.has("8BITMIME") {
		b.WriteString(" BODY=" + e.body)
	}
	if e.utf8 && u.has("SMTPUTF8") {
		b.WriteString(" SMTPUTF8")
	}
	r, err := u.cmd(b.String())
	if err != nil {
		return nil, err
	}
	switch r.Code / 100 {
	case 2:
		u.state = upMail
	case 3:
		return nil, u.lose(fmt.Errorf("%w: %d to MAIL", errUpstreamProtocol, r.Code))
	}
	return r, nil
}

// rcpt adds a recipient; the reply is the client's (relayed).
func (u *upstream) rcpt(addr string) (*Reply, error) {
	r, err := u.cmd("RCPT TO:<" + addr + ">")
	if err != nil {
		return nil, err
	}
	if r.Code/100 == 3 {
		return nil, u.lose(fmt.Errorf("%w: %d to RCPT", errUpstreamProtocol, r.Code))
	}
	return relayReply(r, true), nil
}

// data asks for the go-ahead: ok when the upstream answered 354 (r is
// that reply, to relay), else r is the refusal to relay.
func (u *upstream) data() (r *Reply, ok bool, err error) {
	r, err = u.cmd("DATA")
	if err != nil {
		return nil, false, err
	}
	switch {
	case r.Code == 354:
		u.state = upData
		return r, true, nil
	case r.Positive():
		return nil, false, u.lose(fmt.Errorf("%w: %d to DATA", errUpstreamProtocol, r.Code))
	}
	return relayReply(r, false), false, nil
}

// write sends message octets, canonical and dot-stuffed already.
func (u *upstream) write(p []byte) error {
	u.conn.SetWriteDeadline(time.Now().Add(u.p.commandTimeout))
	if _, err := u.conn.Write(p); err != nil {
		return u.lose(err)
	}
	return nil
}

// endData sends the end of data and waits for the verdict (RFC 5321
// §4.5.3.2.6: up to 10 minutes); the transaction is over either way.
func (u *upstream) endData() (*Reply, error) {
	if err := u.write([]byte(".\r\n")); err != nil {
		return nil, err
	}
	r, err := u.readReply(u.p.dataTimeout)
	if err != nil {
		return nil, u.lose(err)
	}
	u.state = upReady
	switch {
	case r.Code == 421:
		return nil, u.lose(relayReply(r, false))
	case r.Code/100 == 3:
		return nil, u.lose(fmt.Errorf("%w: %d to the end of data", errUpstreamProtocol, r.Code))
	}
	return relayReply(r, false), nil
}

// quiet reports an upstream that has neither sent anything nor closed:
// one that spoke (a 421) or left (a reset) while taking a message is lost,
// whatever it may say to the end of data.
func (u *upstream) quiet() bool {
	n, ok, err := peek(u.raw)
	return !ok || n < 0 && err == syscall.EAGAIN
}

// reset ends an open transaction with RSET; a connection that cannot is
// let go.
func (u *upstream) reset() {
	if u.state == upReady {
		return
	}
	if u.state == upData {
		u.drop()
		return
	}
	if r, err := u.cmd("RSET"); err != nil || r.Code != 250 {
		u.end()
		return
	}
	u.state = upReady
}
