package main

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"time"
)

// XCLIENT (Postfix XCLIENT_README) tells the upstream who the real client
// is. Every value is xtext-encoded (RFC 3461 §4): a HELO with a space, tab
// or "ADDR=127.0.0.1" must stay one HELO value and never become a second
// attribute that makes the upstream trust the client.

// xtextEncode encodes s: "+", "=" and octets outside 33-126 become "+XX".
func xtextEncode(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 33 || c > 126 || c == '+' || c == '=' {
			b.WriteByte('+')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// xtextDecode is the inverse of xtextEncode; it rejects malformed input.
func xtextDecode(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '+':
			if i+2 >= len(s) {
				return "", errors.New("xtext: truncated +XX")
			}
			v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
			if err != nil || s[i+1] >= 'a' || s[i+2] >= 'a' {
				return "", errors.New("xtext: bad +XX")
			}
			b.WriteByte(byte(v))
			i += 2
		case c < 33 || c > 126 || c == '=':
			return "", errors.New("xtext: bad character")
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

// Postfix's values for a client name that cannot be had.
const (
	nameUnavailable = "[UNAVAILABLE]"
	nameTempUnavail = "[TEMPUNAVAIL]"
)

// maxXCLIENTValue bounds one encoded value (Postfix: 255).
const maxXCLIENTValue = 255

// fcrdnsTimeout bounds the reverse and forward lookups for NAME.
const fcrdnsTimeout = 3 * time.Second

// clientName returns the client's forward-confirmed reverse DNS name, or
// [UNAVAILABLE] / [TEMPUNAVAIL] as Postfix defines them.
func clientName(ctx context.Context, r *net.Resolver, ip net.IP) string {
	if ip == nil {
		return nameUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, fcrdnsTimeout)
	defer cancel()
	names, err := r.LookupAddr(ctx, ip.String())
	if err != nil {
		if isTempDNS(err) {
			return nameTempUnavail
		}
		return nameUnavailable
	}
	temp := false
	for _, n := range names {
		n = strings.TrimSuffix(n, ".")
		// LookupHost, not LookupIPAddr: the same answers without the
		// goroutine LookupIPAddr starts to share a lookup, which a process
		// serving one connection never shares.
		addrs, err := r.LookupHost(ctx, n)
		if err != nil {
			temp = temp || isTempDNS(err)
			continue
		}
		for _, a := range addrs {
			if sameIP(a, ip) {
				return strings.ToLower(n)
			}
		}
	}
	if temp {
		return nameTempUnavail
	}
	return nameUnavailable
}

// sameIP reports whether the address text a, as LookupHost returns it
// (an IPv6 address from /etc/hosts may carry a %zone), is ip.
func sameIP(a string, ip net.IP) bool {
	if i := strings.IndexByte(a, '%'); i >= 0 {
		a = a[:i]
	}
	return net.ParseIP(a).Equal(ip)
}

func isTempDNS(err error) bool {
	var de *net.DNSError
	if errors.As(err, &de) {
		return !de.IsNotFound && (de.IsTemporary || de.IsTimeout)
	}
	return errors.Is(err, context.DeadlineExceeded)
}

// xclientAttrs lists the attributes to send, NAME and ADDR last, each only
// when the upstream advertised it.
func (c clientFacts) xclientAttrs(offered map[string]bool) []string {
	var attrs []string
	add := func(k, v string) {
		if offered[k] {
			attrs = append(attrs, k+"="+xtextEncode(v))
		}
	}
	if offered["HELO"] {
		helo := c.helo
		if helo == "" || len(xtextEncode(helo)) > maxXCLIENTValue {
			helo = nameUnavailable
		}
		add("HELO", helo)
	}
	proto := "SMTP"
	if c.esmtp {
		proto = "ESMTP"
	}
	add("PROTO", proto)
	if c.port > 0 {
		add("PORT", strconv.Itoa(c.port))
	}
	if offered["NAME"] {
		add("NAME", c.name())
	}
	if offered["ADDR"] {
		addr := nameUnavailable
		if ip := c.ip; ip != nil {
			if ip4 := ip.To4(); ip4 != nil {
				addr = ip4.String()
			} else {
				addr = "IPV6:" + ip.String()
			}
		}
		add("ADDR", addr)
	}
	return attrs
}

// name resolves the client's name once per session, only when needed.
func (s *Session) name() string {
	if s.clientNameCache == "" {
		s.clientNameCache = s.lookupName(s.ctx, s.clientIP)
	}
	return s.clientNameCache
}

// xclientCommands packs attributes into XCLIENT commands under 512 octets,
// the connection attributes (PORT, NAME, ADDR) kept together in the last
// command, as Postfix applies them as one.
func xclientCommands(attrs []string) []string {
	const max = 510 // 512 less CRLF
	tail := len(attrs)
	for tail > 0 && (strings.HasPrefix(attrs[tail-1], "NAME=") || strings.HasPrefix(attrs[tail-1], "ADDR=") ||
		strings.HasPrefix(attrs[tail-1], "PORT=")) {
		tail--
	}
	units := append([]string(nil), attrs[:tail]...)
	if tail < len(attrs) {
		units = append(units, strings.Join(attrs[tail:], " "))
	}
	var cmds []string
	line := "XCLIENT"
	for _, a := range units {
		if len(line)+1+len(a) > max && line != "XCLIENT" {
			cmds = append(cmds, line)
			line = "XCLIENT"
		}
		line += " " + a
	}
	if line != "XCLIENT" {
		cmds = append(cmds, line)
	}
	return cmds
}

// sendXCLIENT hands the client's identity to an upstream that offers
// XCLIENT: after STARTTLS, before MAIL. A refusal of an advertised XCLIENT
// is a fault to surface: that upstream gets no message.
func (u *upstream) sendXCLIENT() *Reply {
	params, ok := u.ext["XCLIENT"]
	if !ok {
		u.xclient = "not-offered"
		return nil
	}
	offered := map[string]bool{}
	for _, a := range strings.Fields(strings.ToUpper(params)) {
		offered[a] = true
	}
	cmds := xclientCommands(u.p.client.xclientAttrs(offered))
	if len(cmds) == 0 {
		u.xclient = "no-attributes"
		return nil
	}
	for _, c := range cmds {
		r, err := u.cmd(c)
		if errors.As(err, &r) { // a 421: refused, and closed
			err = nil
		}
		if err != nil {
			return u.fault("XCLIENT", err)
		}
		// Postfix answers 220 (a new greeting); smtp-sink answers 250.
		if r.Code/100 != 2 {
			u.xclient = "refused"
			u.p.log.Warn("upstream refused XCLIENT", "upstream", u.server.String(), "reply", r.Error())
			return replyXCLIENTRefused
		}
	}
	u.xclient = "accepted"
	// XCLIENT_README: the server answers as if a new client connected; the
	// client greets again, with the client's own HELO name and verb, or the
	// new greeting would replace the HELO and PROTO just sent.
	name, esmtp := u.p.client.helo, u.p.client.esmtp
	if name == "" || len(name) > maxXCLIENTValue {
		name, esmtp = u.p.hostname, true
	}
	return u.regreet(name, esmtp)
}
