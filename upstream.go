package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// upstream is willi's connection to the server a transaction was routed to.
// Every line it sends is built by willi from parsed fields; nothing the
// client typed goes through raw.
type upstream struct {
	s       *Session
	conn    net.Conn
	r       *bufio.Reader
	server  Server
	routeID string
	policy  UpstreamConfig
	ext     map[string]string // EHLO keywords (upper case) and their parameters
	tls     string            // "" for plaintext, else version and cipher
	xclient string            // what became of the client address hand-over
	inTx    bool              // MAIL accepted: a transaction is open
	inData  bool              // after its 354: only an end of data may follow
	broken  bool              // the connection is unusable and closed
}

// Limits on what an upstream can make us read (security rule 6).
const (
	maxUpstreamLine  = 512
	maxUpstreamLines = 100
)

// errUpstreamProtocol is a reply that breaks RFC 5321, or unsolicited bytes.
var errUpstreamProtocol = errors.New("upstream protocol violation")

// readReply reads one reply, strictly: 3 digits (2-5 first), '-' or ' ' or
// end of line, the same code on every line, bounded line length and count.
func (u *upstream) readReply(timeout time.Duration) (*Reply, error) {
	u.conn.SetReadDeadline(time.Now().Add(timeout))
	r, err := readReply(u.r)
	if err != nil {
		return nil, err
	}
	if u.s.debug {
		for _, l := range r.Text {
			u.s.log.Debug("u<", "line", fmt.Sprintf("%d %s %s", r.Code, r.Enh, l))
		}
	}
	return r, nil
}

// readReply parses one reply from r. The enhanced status code is split off
// when every line carries the same one of the reply's class.
func readReply(br *bufio.Reader) (*Reply, error) {
	rep := &Reply{}
	var lines []string
	for n := 0; ; n++ {
		if n == maxUpstreamLines {
			return nil, fmt.Errorf("%w: more than %d reply lines", errUpstreamProtocol, maxUpstreamLines)
		}
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull || len(line) > maxUpstreamLine {
			return nil, fmt.Errorf("%w: reply line too long", errUpstreamProtocol)
		}
		if err != nil {
			if err == io.EOF && len(line) == 0 {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
		l := strings.TrimSuffix(strings.TrimSuffix(string(line), "\n"), "\r")
		if len(l) < 3 || l[0] < '2' || l[0] > '5' || !isDigit(l[1]) || !isDigit(l[2]) || len(l) > 3 && l[3] != ' ' && l[3] != '-' {
			return nil, fmt.Errorf("%w: bad reply line %.40q", errUpstreamProtocol, l)
		}
		code, _ := strconv.Atoi(l[:3])
		if n == 0 {
			rep.Code = code
		} else if code != rep.Code {
			return nil, fmt.Errorf("%w: reply code changed within a reply", errUpstreamProtocol)
		}
		text := ""
		if len(l) > 4 {
			text = l[4:]
		}
		lines = append(lines, text)
		if len(l) == 3 || l[3] == ' ' {
			break
		}
	}
	rep.Text = lines
	splitEnhanced(rep)
	return rep, nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// splitEnhanced moves an enhanced status code present on every line into
// rep.Enh. A reply without one keeps its text, and Enh gets the class's
// generic code so that our client still sees one (RFC 2034).
func splitEnhanced(rep *Reply) {
	class := byte('0' + rep.Code/100)
	enh := ""
	for i, l := range rep.Text {
		e, rest, _ := strings.Cut(l, " ")
		if !isEnhanced(e) || e[0] != class || i > 0 && e != enh {
			enh = ""
			break
		}
		enh = e
		_ = rest
	}
	if enh == "" {
		if rep.Code/100 != 3 {
			rep.Enh = string(class) + ".0.0"
		}
		return
	}
	for i, l := range rep.Text {
		_, rest, _ := strings.Cut(l, " ")
		rep.Text[i] = rest
	}
	rep.Enh = enh
}

// isEnhanced: class "." subject "." detail, RFC 3463.
func isEnhanced(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || len(parts[0]) != 1 || parts[0][0] < '2' || parts[0][0] > '5' {
		return false
	}
	for _, p := range parts[1:] {
		if len(p) < 1 || len(p) > 3 {
			return false
		}
		for i := 0; i < len(p); i++ {
			if !isDigit(p[i]) {
				return false
			}
		}
	}
	return true
}

// send writes one command line built by willi.
func (u *upstream) send(line string) error {
	if u.s.debug {
		u.s.log.Debug("u>", "line", line)
	}
	u.conn.SetWriteDeadline(time.Now().Add(u.s.cfg.UpstreamCommandTimeout.Duration))
	_, err := io.WriteString(u.conn, line+"\r\n")
	return err
}

// cmd sends a command and reads its reply. Bytes left over after the reply,
// when nothing else was asked, are unsolicited: the upstream is dropped.
func (u *upstream) cmd(line string) (*Reply, error) {
	if err := u.send(line); err != nil {
		return nil, err
	}
	return u.reply(u.s.cfg.UpstreamCommandTimeout.Duration)
}

func (u *upstream) reply(timeout time.Duration) (*Reply, error) {
	r, err := u.readReply(timeout)
	if err != nil {
		return nil, err
	}
	if u.r.Buffered() > 0 {
		return nil, fmt.Errorf("%w: unsolicited bytes after a %d reply", errUpstreamProtocol, r.Code)
	}
	return r, nil
}

// close drops the connection without a word: used on every abort, so an
// upstream in DATA never sees an end of data.
func (u *upstream) close() {
	if !u.broken {
		u.broken = true
		u.conn.Close()
	}
}

// quit ends the connection politely, not waiting long for the reply.
func (u *upstream) quit() {
	if u.broken {
		return
	}
	if u.send("QUIT") == nil {
		u.readReply(2 * time.Second)
	}
	u.close()
}

// ehlo greets and records the extensions; falls back to HELO if EHLO is
// refused (RFC 5321 §3.2).
func (u *upstream) ehlo() (*Reply, error) {
	return u.greet(u.s.cfg.Hostname, true)
}

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
		return u.failure(err)
	}
	if r.Code != 250 {
		u.close()
		return replyUpstreamProtocol
	}
	return nil
}

func (u *upstream) has(ext string) bool {
	_, ok := u.ext[ext]
	return ok
}

// failure turns an upstream failure into the client's reply (the one place
// that does so) and drops the connection when it can no longer be trusted.
func (u *upstream) failure(err error) *Reply {
	u.close()
	var rep *Reply
	switch {
	case errors.Is(err, errUpstreamProtocol):
		rep = replyUpstreamProtocol
	case errors.Is(err, os.ErrDeadlineExceeded):
		rep = replyUpstreamTimeout
	default:
		rep = replyUpstreamLost
	}
	u.s.log.Warn("upstream failure", "upstream", u.server.String(), "err", err)
	return rep
}

// relay turns an upstream's reply to a command into the client's reply:
// code, enhanced code and text as the upstream wrote them, except that a 421
// becomes 451 (the client's session goes on; the upstream's is over) and 552
// to RCPT becomes 452 (RFC 5321 §4.5.3.1.10).
func (u *upstream) relay(r *Reply, rcpt bool) *Reply {
	switch {
	case r.Code == 421:
		u.close()
		return r.withCode(451)
	case rcpt && r.Code == 552:
		return r.withCode(452)
	}
	return r
}

// dialUpstream connects to the first server of the route that answers with
// a 2xx banner and completes EHLO, STARTTLS and XCLIENT per policy.
func (s *Session) dialUpstream(ctx context.Context, route Route) (*upstream, *Reply) {
	var last *Reply
	for _, srv := range route.Servers {
		if s.isOwnAddress(srv) {
			s.log.Error("route points at willi itself", "upstream", srv.String(), "mapping", route.Mapping, "key", route.Key)
			return nil, replyRouteLoop
		}
		u, rep := s.openServer(ctx, srv)
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

// openServer runs one server's connection setup. A connect failure, a
// timeout or a non-2xx banner yields replyUpstreamDown so that the caller
// tries the next server.
func (s *Session) openServer(ctx context.Context, srv Server) (*upstream, *Reply) {
	policy := s.cfg.upstreamPolicy(srv)
	dctx, cancel := context.WithTimeout(ctx, s.cfg.UpstreamConnectTimeout.Duration)
	defer cancel()
	conn, err := s.dial(dctx, "tcp", srv.String())
	if err != nil {
		s.log.Warn("upstream connect failed", "upstream", srv.String(), "err", err)
		return nil, replyUpstreamDown
	}
	u := &upstream{s: s, conn: conn, r: bufio.NewReaderSize(conn, 4096), server: srv, policy: policy, xclient: "off"}
	if policy.ClientAddress == addrProxyV1 || policy.ClientAddress == addrProxyV2 {
		if err := s.writeProxyHeader(conn, policy.ClientAddress); err != nil {
			u.close()
			s.log.Warn("upstream PROXY header failed", "upstream", srv.String(), "err", err)
			return nil, replyUpstreamDown
		}
		u.xclient = policy.ClientAddress
	}
	banner, err := u.reply(s.cfg.UpstreamConnectTimeout.Duration)
	if err != nil {
		u.close()
		s.log.Warn("upstream banner failed", "upstream", srv.String(), "err", err)
		return nil, replyUpstreamDown
	}
	if banner.Code != 220 {
		u.close()
		s.log.Warn("upstream refused the connection", "upstream", srv.String(), "reply", banner.Error())
		return nil, replyUpstreamDown
	}
	if rep := u.setup(); rep != nil {
		return nil, rep
	}
	return u, nil
}

// setup runs EHLO, STARTTLS per policy and XCLIENT per policy.
func (u *upstream) setup() *Reply {
	r, err := u.ehlo()
	if err != nil {
		return u.failure(err)
	}
	if r.Code != 250 {
		u.close()
		u.s.log.Warn("upstream refused EHLO and HELO", "upstream", u.server.String(), "reply", r.Error())
		return replyUpstreamDown
	}
	if rep := u.startTLS(); rep != nil {
		return rep
	}
	if u.policy.ClientAddress == addrXCLIENT {
		if rep := u.sendXCLIENT(); rep != nil {
			return rep
		}
	}
	return nil
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
