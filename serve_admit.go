package main

// Admission in willi serve: who gets a session, who gets a 421, and which
// new sessions are told that the server is under stress.

import (
	"io"
	"net"
	"time"
)

// refusal is the 421 a connection gets instead of a session.
type refusal struct{ code, text string }

var (
	// Too many sessions from one address: Postfix's anvil answers the same
	// code (smtpd_client_connection_count_limit).
	refusePerSource = refusal{"421 4.7.0", "Error: too many connections from your address, try again later"}
	// The total cap: the server is busy (RFC 3463 X.3.2, "system not
	// accepting network messages").
	refuseBusy = refusal{"421 4.3.2", "Service busy, too many connections, try again later"}
	// A child could not be started (out of processes or memory).
	refuseUnavailable = refusal{"421 4.3.0", "Service temporarily unavailable, try again later"}
)

// serveSource is the client's IP address and port (IPv4-mapped IPv6
// addresses count as their IPv4 address: a dual-stack socket's IPv4
// clients appear as themselves).
func serveSource(a net.Addr) (ip string, port int) {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String(), 0
	}
	if v4 := ta.IP.To4(); v4 != nil {
		return v4.String(), ta.Port
	}
	return ta.IP.String(), ta.Port
}

// sourceKey is what the per-source limit counts by: the IPv4 address, or
// the IPv6 /64 (one site's hosts, and what one host can pick addresses
// from at will).
func sourceKey(ip string) string {
	parsed := net.ParseIP(ip)
	if parsed == nil || parsed.To4() != nil {
		return ip
	}
	return (&net.IPNet{IP: parsed.Mask(net.CIDRMask(64, 128)), Mask: net.CIDRMask(64, 128)}).String()
}

// admit takes a slot for a connection from key, or says why not; stressed
// reports that the server is at or past -stress-at with this connection,
// so its session gets the short timeout.
func (s *server) admit(key string) (r *refusal, stressed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.total >= s.opts.maxConn:
		return &refuseBusy, false
	case s.perSource[key] >= s.opts.maxPerSource:
		return &refusePerSource, false
	}
	s.total++
	s.perSource[key]++
	return nil, s.total >= s.opts.stressAt
}

// release gives back the slot admit took.
func (s *server) release(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total--
	if s.perSource[key]--; s.perSource[key] <= 0 {
		delete(s.perSource, key)
	}
}

// serveRefuse answers the 421 (RFC 5321 §3.8: the code, then the server's
// name) and closes without reading what the client sent.
func serveRefuse(c net.Conn, hostname string, r refusal) {
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(serveRefuseTimeout))
	io.WriteString(c, r.code+" "+hostname+" "+r.text+"\r\n")
	if tc, ok := c.(*net.TCPConn); ok {
		// Let the reply leave before the close; drop anything unread
		// without a reset racing it.
		tc.CloseWrite()
		c.SetReadDeadline(time.Now().Add(time.Second))
		io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	}
}
