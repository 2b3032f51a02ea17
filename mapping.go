package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// A Mapping answers "which upstream takes mail for this key". Opening one
// must be cheap (no I/O): a session opens its mappings only when a RCPT needs
// them, and each process reads them fresh.
type Mapping interface {
	// Lookup asks for keys in the order given (most specific first) and
	// returns the first key that has an answer and its server string.
	// key == "" with a nil error means "no answer here": the chain moves on.
	// Any error stops the chain.
	Lookup(ctx context.Context, keys []string) (key, server string, err error)
	// Check opens the mapping fully (parses the whole file, connects and
	// prepares the query) and returns warnings that do not stop it working.
	Check(ctx context.Context) (warnings []string, err error)
	Close() error
	// String names the mapping in logs and in `willi lookup`, e.g. "csv:/opt/willi/etc/routes.csv".
	String() string
}

// errNoRoute means no mapping in the chain answered for any key.
var errNoRoute = errors.New("no route")

// lookupError wraps a mapping failure: the recipient gets a 4xx, the chain stops.
type lookupError struct {
	mapping string
	err     error
}

func (e *lookupError) Error() string { return e.mapping + ": " + e.err.Error() }
func (e *lookupError) Unwrap() error { return e.err }

// badRouteError is a mapping answer that is not a usable server string
// (a configuration fault, 451 4.3.5).
type badRouteError struct {
	mapping, key, server string
	err                  error
}

func (e *badRouteError) Error() string {
	return fmt.Sprintf("%s: key %q: bad server %q: %v", e.mapping, e.key, e.server, e.err)
}

// Route is where a recipient goes and why.
type Route struct {
	Servers []Server
	Mapping string   // which mapping answered
	Key     string   // which key matched
	Notes   []string // how mappings answered, e.g. "csv:/x.csv from index"
}

// ID identifies the upstream of a route: recipients of one transaction must
// share it.
func (r Route) ID() string {
	s := make([]string, len(r.Servers))
	for i, v := range r.Servers {
		s[i] = v.String()
	}
	return strings.Join(s, " ")
}

// Chain is the ordered list of mappings from the config.
type Chain struct {
	mappings []Mapping
}

// newChain builds the chain without opening anything.
func newChain(c *Config) (*Chain, error) {
	ch := &Chain{}
	for _, mc := range c.Mappings {
		m, err := newMapping(mc)
		if err != nil {
			ch.Close()
			return nil, err
		}
		ch.mappings = append(ch.mappings, m)
	}
	return ch, nil
}

func newMapping(mc MappingConfig) (Mapping, error) {
	switch mc.Type {
	case "csv":
		return newCSVMapping(mc.File, mc.indexDir), nil
	case "mysql":
		return newMySQLMapping(mc.DSN, mc.Query)
	case "static":
		return staticMapping(mc.Server), nil
	}
	return nil, fmt.Errorf("unknown mapping type %q", mc.Type)
}

// Route asks each mapping in order for the keys of addr; the first mapping
// that answers decides. addr must be canonical (see canonicalAddress).
func (ch *Chain) Route(ctx context.Context, addr, delimiter string) (Route, error) {
	keys := lookupKeys(addr, delimiter)
	literal := isAddressLiteral(addr)
	var notes []string
	for _, m := range ch.mappings {
		if _, ok := m.(staticMapping); ok && literal {
			// An address literal is routed only where a mapping names it
			// exactly; a catch-all default must not make willi relay to
			// arbitrary IP addresses.
			continue
		}
		key, server, err := m.Lookup(ctx, keys)
		if a, ok := m.(interface{ answeredBy() string }); ok && a.answeredBy() != "" {
			notes = append(notes, m.String()+" "+a.answeredBy())
		}
		if err != nil {
			return Route{Notes: notes}, &lookupError{mapping: m.String(), err: err}
		}
		if key == "" {
			continue
		}
		servers, err := parseServers(server)
		if err != nil {
			return Route{Notes: notes}, &badRouteError{mapping: m.String(), key: key, server: server, err: err}
		}
		return Route{Servers: servers, Mapping: m.String(), Key: key, Notes: notes}, nil
	}
	return Route{Notes: notes}, errNoRoute
}

// Close closes every mapping.
func (ch *Chain) Close() {
	for _, m := range ch.mappings {
		m.Close()
	}
}

// lookupKeys lists the keys for a canonical address, most specific first:
// the address, the address without the delimiter suffix, the domain, then
// each parent domain as ".parent".
func lookupKeys(addr, delimiter string) []string {
	addr = strings.ToLower(addr)
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return []string{addr}
	}
	local, domain := addr[:at], addr[at+1:]
	keys := []string{addr}
	if delimiter != "" {
		if i := strings.Index(local, delimiter); i > 0 {
			keys = append(keys, local[:i]+"@"+domain)
		}
	}
	keys = append(keys, domain)
	if strings.HasPrefix(domain, "[") {
		return keys // an address literal has no parents
	}
	for d := domain; ; {
		i := strings.IndexByte(d, '.')
		if i < 0 {
			break
		}
		keys = append(keys, d[i:])
		d = d[i+1:]
	}
	return keys
}

// staticMapping answers every key with one server string.
type staticMapping string

func (s staticMapping) Lookup(_ context.Context, keys []string) (string, string, error) {
	if len(keys) == 0 {
		return "", "", nil
	}
	return keys[0], string(s), nil
}
func (s staticMapping) Check(context.Context) ([]string, error) { return nil, nil }
func (s staticMapping) Close() error                            { return nil }
func (s staticMapping) String() string                          { return "static" }

// Server is one upstream address.
type Server struct {
	Host string // name or IP, without brackets
	Port int
}

func (s Server) String() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// parseServers parses a server string: host[:port] entries separated by
// spaces, tried in order. IPv6 is written [::1]:2525.
func parseServers(s string) ([]Server, error) {
	fields := strings.Fields(s)
	if len(fields) == 0 {
		return nil, errors.New("empty server")
	}
	out := make([]Server, 0, len(fields))
	for _, f := range fields {
		srv, err := parseServer(f)
		if err != nil {
			return nil, err
		}
		out = append(out, srv)
	}
	return out, nil
}

func parseServer(f string) (Server, error) {
	host, port := f, "25"
	if strings.HasPrefix(f, "[") {
		end := strings.IndexByte(f, ']')
		if end < 0 {
			return Server{}, fmt.Errorf("%q: missing ]", f)
		}
		host = f[1:end]
		rest := f[end+1:]
		if rest != "" {
			if !strings.HasPrefix(rest, ":") {
				return Server{}, fmt.Errorf("%q: junk after ]", f)
			}
			port = rest[1:]
		}
		if net.ParseIP(host) == nil {
			return Server{}, fmt.Errorf("%q: not an IP address in brackets", f)
		}
	} else if i := strings.LastIndexByte(f, ':'); i >= 0 {
		host, port = f[:i], f[i+1:]
		if strings.Contains(host, ":") {
			return Server{}, fmt.Errorf("%q: write IPv6 addresses as [addr]:port", f)
		}
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return Server{}, fmt.Errorf("%q: bad port", f)
	}
	if net.ParseIP(host) == nil && !validDomain(host) {
		return Server{}, fmt.Errorf("%q: bad host name", f)
	}
	return Server{Host: strings.ToLower(strings.TrimSuffix(host, ".")), Port: p}, nil
}

// validDomain checks LDH labels (RFC 5321 §4.1.2 Domain), one optional
// trailing dot, at most 255 octets.
func validDomain(d string) bool {
	d = strings.TrimSuffix(d, ".")
	if d == "" || len(d) > 255 {
		return false
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
