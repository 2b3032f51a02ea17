package main

import (
	"net"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// RFC 5321 §4.5.3.1: size limits of the parts of a path.
const (
	maxLocalPart = 64
	maxDomain    = 255
	maxPath      = 256 // including "<" and ">"
)

// pathArg is a parsed MAIL FROM or RCPT TO argument.
type pathArg struct {
	addr   string // canonical mailbox; "" for the null sender <>
	utf8   bool   // the mailbox has non-ASCII octets (needs SMTPUTF8)
	params []param
}

// param is one ESMTP parameter; key upper-cased, value as sent.
type param struct{ key, value string }

var (
	replyMailSyntax = fixedReply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
	replyRcptSyntax = fixedReply(501, "5.5.4", "Syntax: RCPT TO:<address>")
	replyAddrSyntax = fixedReply(501, "5.1.3", "Error: bad address syntax")
	replyAddrLength = fixedReply(501, "5.1.3", "Error: address too long")
	replyAddrHack   = fixedReply(553, "5.1.3", "Error: local part with %, ! or quoting not accepted")
	replyParamDup   = fixedReply(501, "5.5.4", "Error: duplicate parameter")
	replyParamBad   = fixedReply(501, "5.5.4", "Error: bad parameter syntax")
)

// parsePathArg parses the argument of MAIL ("FROM:") or RCPT ("TO:"):
// prefix, a <path>, then ESMTP parameters. A space after the colon is
// tolerated, as Postfix does; the angle brackets are not optional.
func parsePathArg(arg, prefix string, mail bool) (pathArg, *Reply) {
	syntax := replyRcptSyntax
	if mail {
		syntax = replyMailSyntax
	}
	if len(arg) < len(prefix) || !strings.EqualFold(arg[:len(prefix)], prefix) {
		return pathArg{}, syntax
	}
	rest := strings.TrimLeft(arg[len(prefix):], " ")
	if !strings.HasPrefix(rest, "<") {
		return pathArg{}, syntax
	}
	end := closingBracket(rest)
	if end < 0 {
		return pathArg{}, syntax
	}
	path, tail := rest[1:end], rest[end+1:]
	if tail != "" && tail[0] != ' ' {
		return pathArg{}, syntax
	}
	var p pathArg
	var r *Reply
	if p.params, r = parseParams(tail); r != nil {
		return pathArg{}, r
	}
	if path == "" {
		if !mail {
			return pathArg{}, replyAddrSyntax
		}
		return p, nil
	}
	if len(path)+2 > maxPath {
		return pathArg{}, replyAddrLength
	}
	p.addr, p.utf8, r = canonicalAddress(path, !mail)
	if r != nil {
		return pathArg{}, r
	}
	return p, nil
}

// closingBracket finds the ">" that ends the path starting at s[0] == '<',
// skipping quoted strings.
func closingBracket(s string) int {
	quoted := false
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && c == '>':
			return i
		}
	}
	return -1
}

func parseParams(s string) ([]param, *Reply) {
	var out []param
	for _, f := range strings.Split(s, " ") {
		if f == "" {
			continue
		}
		key, value, hasValue := strings.Cut(f, "=")
		if !isKeyword(key) || hasValue && !isParamValue(value) {
			return nil, replyParamBad
		}
		key = strings.ToUpper(key)
		for _, q := range out {
			if q.key == key {
				return nil, replyParamDup
			}
		}
		out = append(out, param{key: key, value: value})
	}
	return out, nil
}

// isKeyword: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
func isKeyword(s string) bool {
	if s == "" || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(isAlnum(c) || c == '-') {
			return false
		}
	}
	return true
}

// isParamValue: esmtp-value = 1*(%d33-60 / %d62-126)
func isParamValue(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 33 || c > 126 || c == '=' {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// isAtext: RFC 5322 atext, plus UTF-8 octets (RFC 6531 atext = ... / UTF8-non-ascii).
func isAtext(c byte) bool {
	return isAlnum(c) || strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0 || c >= 0x80
}

// canonicalAddress turns a path (without angle brackets) into the one
// canonical mailbox that is both looked up and sent upstream: source route
// dropped, quoting removed where it is not needed, domain lower-cased, its
// trailing dot removed and IDNs turned into A-labels.
func canonicalAddress(path string, rcpt bool) (addr string, nonASCII bool, r *Reply) {
	if strings.HasPrefix(path, "@") {
		// RFC 5321 §4.1.1.3 and appendix C: ignore the source route.
		i := strings.IndexByte(path, ':')
		if i < 0 {
			return "", false, replyAddrSyntax
		}
		path = path[i+1:]
	}
	local, domain, r := splitMailbox(path, !rcpt)
	if r != nil {
		return "", false, r
	}
	if domain == "" {
		// RFC 5321 §4.5.1: <Postmaster> without a domain must be accepted.
		if rcpt && strings.EqualFold(local, "postmaster") {
			return "postmaster", false, nil
		}
		return "", false, replyAddrSyntax
	}
	if len(local) > maxLocalPart {
		return "", false, replyAddrLength
	}
	if rcpt && strings.ContainsAny(local, "%!") {
		return "", false, replyAddrHack
	}
	if !utf8.ValidString(local) {
		return "", false, replyAddrSyntax
	}
	d, r := canonicalDomain(domain)
	if r != nil {
		return "", false, r
	}
	addr = local + "@" + d
	if len(addr)+2 > maxPath {
		return "", false, replyAddrLength
	}
	for i := 0; i < len(local); i++ {
		if local[i] >= 0x80 {
			nonASCII = true
			break
		}
	}
	return addr, nonASCII, nil
}

// splitMailbox splits local@domain, unquoting a quoted local part when its
// content is a plain dot-string. Otherwise a recipient's is refused (it is
// routed, and % ! and quoting are relay hacks), and a sender's is kept,
// quoted anew: senders are not routed, and the upstream judges them.
func splitMailbox(s string, sender bool) (local, domain string, r *Reply) {
	if strings.HasPrefix(s, "\"") {
		var b strings.Builder
		i := 1
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] == '\\' {
				i++
				if i == len(s) {
					return "", "", replyAddrSyntax
				}
			}
			b.WriteByte(s[i])
		}
		if i >= len(s) {
			return "", "", replyAddrSyntax
		}
		local, s = b.String(), s[i+1:]
		if !isDotString(local) {
			if !sender {
				return "", "", replyAddrHack
			}
			if local, r = quoteLocal(local); r != nil {
				return "", "", r
			}
		}
		if s == "" {
			return local, "", nil
		}
		if s[0] != '@' {
			return "", "", replyAddrSyntax
		}
		return local, s[1:], nil
	}
	local, domain, _ = strings.Cut(s, "@")
	if !isDotString(local) {
		if strings.ContainsAny(local, "%!") && !sender {
			return "", "", replyAddrHack
		}
		return "", "", replyAddrSyntax
	}
	if strings.Contains(s, "@") && domain == "" {
		return "", "", replyAddrSyntax
	}
	return local, domain, nil
}

// quoteLocal writes a local part as an RFC 5321 Quoted-string: printable
// text (UTF-8 allowed, as SMTPUTF8 does), '"' and '\\' escaped.
func quoteLocal(l string) (string, *Reply) {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(l); i++ {
		c := l[i]
		if c < 0x20 || c == 0x7f {
			return "", replyAddrSyntax
		}
		if c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	b.WriteByte('"')
	return b.String(), nil
}

// isDotString: Dot-string = Atom *("." Atom)
func isDotString(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c != '.' && !isAtext(c) {
			return false
		}
	}
	return true
}

// canonicalDomain validates a domain or address literal and returns its
// canonical form.
func canonicalDomain(d string) (string, *Reply) {
	if strings.HasPrefix(d, "[") {
		if !strings.HasSuffix(d, "]") {
			return "", replyAddrSyntax
		}
		lit := d[1 : len(d)-1]
		if v6, ok := cutPrefixFold(lit, "IPv6:"); ok {
			ip := net.ParseIP(v6)
			if ip == nil || ip.To4() != nil && !strings.Contains(v6, ":") {
				return "", replyAddrSyntax
			}
			if ip4 := ip.To4(); ip4 != nil {
				// ip.String() would print a v4-mapped address as a bare
				// IPv4 address, which is no IPv6 literal.
				return "[IPv6:::ffff:" + ip4.String() + "]", nil
			}
			return "[IPv6:" + ip.String() + "]", nil
		}
		ip := net.ParseIP(lit)
		if ip == nil || ip.To4() == nil || strings.Contains(lit, ":") {
			return "", replyAddrSyntax
		}
		return "[" + ip.String() + "]", nil
	}
	d = strings.TrimSuffix(d, ".")
	for i := 0; i < len(d); i++ {
		if d[i] >= 0x80 {
			// idna maps invalid UTF-8 to U+FFFD instead of failing.
			if !utf8.ValidString(d) {
				return "", replyAddrSyntax
			}
			a, err := idna.Lookup.ToASCII(d)
			if err != nil {
				return "", replyAddrSyntax
			}
			d = a
			break
		}
	}
	d = strings.ToLower(d)
	if len(d) > maxDomain {
		return "", replyAddrLength
	}
	if !validDomain(d) || strings.HasSuffix(d, ".") {
		return "", replyAddrSyntax
	}
	return d, nil
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return s, false
}

// isAddressLiteral reports a canonical address whose domain is [literal].
func isAddressLiteral(addr string) bool {
	return strings.HasSuffix(addr, "]")
}
