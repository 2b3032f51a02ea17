package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"time"
)

// probeClient is the client an upstream is told about when probed: an
// address from the documentation range (RFC 5737), so that XCLIENT and
// PROXY are tried as a session would try them without naming a real host.
// (A function: a session's process start pays for no probe.)
func probeClient() clientFacts {
	return clientFacts{
		ip: net.IPv4(192, 0, 2, 1).To4(), port: 25, helo: "probe.invalid", esmtp: true,
		tls:  true, // under starttls = "mirror", as for a client that used TLS
		name: func() string { return nameUnavailable },
	}
}

// runProbe implements `willi probe [-config FILE] [ADDRESS|SERVER...]`:
// each upstream the config can route to (or those named, an address
// through its route) is connected to as a session would, and its fitness
// reported. The seed's worst pitfall, an upstream that refuses XCLIENT and
// so sees only willi's address, is found before going live.
func runProbe(args []string, out io.Writer) int {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	cfgPath := fs.String("config", defaultConfigFile, "config file")
	if err := fs.Parse(args); err != nil {
		fmt.Fprintln(os.Stderr, "usage: willi probe [-config FILE] [ADDRESS|SERVER...]")
		return 2
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		fmt.Fprintln(out, err)
		return 2
	}
	servers, err := probeTargets(cfg, fs.Args())
	if err != nil {
		fmt.Fprintln(out, err)
		return 2
	}
	if len(servers) == 0 {
		fmt.Fprintln(out, "no upstream to probe: name one (an address or host:port)")
		return 2
	}
	status := 0
	for _, srv := range servers {
		if !probeServer(cfg, srv, out) {
			status = 1
		}
	}
	return status
}

// probeTargets lists the servers to probe: those named (an address is
// routed), else every server the config names in static mappings, CSV
// files and [[upstream]] policies (a MySQL table is not listed: name its
// servers or addresses).
func probeTargets(cfg *Config, args []string) ([]Server, error) {
	var list []string
	if len(args) > 0 {
		ch, err := newChain(cfg)
		if err != nil {
			return nil, err
		}
		defer ch.Close()
		for _, a := range args {
			if !strings.Contains(a, "@") {
				list = append(list, a)
				continue
			}
			addr, _, r := canonicalAddress(trimBrackets(a), true)
			if r != nil {
				return nil, fmt.Errorf("%s: invalid address: %s", a, r.Text[0])
			}
			ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
			route, err := ch.Route(ctx, addr, cfg.RecipientDelimiter)
			cancel()
			if err != nil {
				return nil, fmt.Errorf("%s: %v", a, err)
			}
			for _, s := range route.Servers {
				list = append(list, s.String())
			}
		}
	} else {
		for _, mc := range cfg.Mappings {
			m, err := newMapping(mc)
			if err != nil {
				return nil, err
			}
			if l, ok := m.(serverLister); ok {
				s, err := l.servers()
				if err != nil {
					m.Close()
					return nil, fmt.Errorf("%s: %v", m, err)
				}
				list = append(list, s...)
			}
			m.Close()
		}
		for _, u := range cfg.Upstreams {
			list = append(list, u.Server)
		}
	}
	var servers []Server
	for _, l := range list {
		ss, err := parseServers(l)
		if err != nil {
			return nil, fmt.Errorf("%q: %v", l, err)
		}
		for _, s := range ss {
			if !slices.Contains(servers, s) {
				servers = append(servers, s)
			}
		}
	}
	return servers, nil
}

// serverLister is a mapping that can list every server it may answer.
type serverLister interface {
	servers() ([]string, error)
}

func (s staticMapping) servers() ([]string, error) { return []string{string(s)}, nil }

func (m *csvMapping) servers() ([]string, error) {
	f, err := os.Open(m.file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var list []string
	err = readCSV(m.file, f, func(_ int, _, server string) error {
		if !slices.Contains(list, server) {
			list = append(list, server)
		}
		return nil
	})
	return list, err
}

// probeServer connects to one server as a session would and reports what
// it found; it returns whether the server is fit under its policy.
func probeServer(cfg *Config, srv Server, out io.Writer) bool {
	policy := cfg.upstreamPolicy(srv)
	fmt.Fprintf(out, "%s (starttls %s, tls_verify %v, client_address %s)\n", srv, policy.StartTLS, policy.TLSVerify, policy.ClientAddress)
	var logged strings.Builder
	log := slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p := upstreamParams{
		hostname: cfg.Hostname, client: probeClient(),
		connectTimeout: cfg.UpstreamConnectTimeout.Duration, commandTimeout: min(cfg.UpstreamCommandTimeout.Duration, 30*time.Second),
		policy: cfg.upstreamPolicy, dial: (&net.Dialer{}).DialContext, log: log,
	}
	start := time.Now()
	u, rep := openUpstream(context.Background(), Route{Servers: []Server{srv}}, p)
	if rep != nil {
		fmt.Fprintf(out, "  unfit: %s\n", rep.Error())
		for _, l := range strings.Split(strings.TrimSpace(logged.String()), "\n") {
			if l != "" {
				fmt.Fprintf(out, "  log: %s\n", l)
			}
		}
		return false
	}
	defer u.end()
	fit := true
	fmt.Fprintf(out, "  banner: %s\n", u.banner)
	fmt.Fprintf(out, "  set-up: %v\n", time.Since(start).Round(time.Millisecond))
	var ext []string
	for k, v := range u.ext {
		ext = append(ext, strings.TrimSpace(k+" "+v))
	}
	slices.Sort(ext)
	fmt.Fprintf(out, "  extensions: %s\n", strings.Join(ext, ", "))
	if u.tlsState == nil {
		fmt.Fprintln(out, "  tls: none")
	} else {
		fmt.Fprintf(out, "  tls: %s\n", u.tlsInfo())
		if certs := u.tlsState.PeerCertificates; len(certs) > 0 {
			c := certs[0]
			fmt.Fprintf(out, "  certificate: subject %q, names %s, issuer %q, expires %s\n",
				c.Subject.CommonName, strings.Join(c.DNSNames, " "), c.Issuer.CommonName, c.NotAfter.Format(time.DateOnly))
		}
		if err := verifyUpstreamPeer(policy, srv.Host, u.tlsState); err != nil {
			fmt.Fprintf(out, "  verification: fails (%v)\n", err)
		} else {
			fmt.Fprintln(out, "  verification: ok")
		}
	}
	switch u.xclient {
	case "accepted":
		fmt.Fprintln(out, "  client address: XCLIENT accepted")
	case addrProxyV1, addrProxyV2:
		fmt.Fprintf(out, "  client address: %s header accepted\n", u.xclient)
	case "off":
		fmt.Fprintln(out, "  client address: not handed over (client_address = \"none\")")
	default:
		fmt.Fprintf(out, "  client address: XCLIENT %s: the upstream sees only this host's address\n", u.xclient)
		fit = false
	}
	if fit {
		fmt.Fprintln(out, "  fit")
	} else {
		fmt.Fprintln(out, "  unfit")
	}
	return fit
}
