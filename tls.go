package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// serverTLSConfig loads the certificate for client STARTTLS. It runs only
// when a client sends STARTTLS, so sessions without TLS never pay for
// reading and parsing the key.
func serverTLSConfig(c *TLSConfig) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		// Each process serves one session with its own random ticket key:
		// a ticket could never resume anything, so none is sent.
		SessionTicketsDisabled: true,
	}, nil
}

// tlsInfo describes the upstream connection's TLS for logs, "" in plain text.
func (u *upstream) tlsInfo() string {
	if u.tlsState == nil {
		return ""
	}
	return tlsSummary(*u.tlsState)
}

// tlsSummary is how a TLS connection is described in logs.
func tlsSummary(st tls.ConnectionState) string {
	return fmt.Sprintf("%s/%s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite))
}

// cmdStartTLS handles the client's STARTTLS (RFC 3207).
func (s *Session) cmdStartTLS(arg string) *Reply {
	if s.cfg.TLS == nil {
		return replyNotImplemented
	}
	if s.tlsInfo != "" {
		return reply(554, "5.5.1", "Error: TLS already active")
	}
	if arg != "" {
		return reply(501, "5.5.4", "Syntax: STARTTLS")
	}
	conf, err := serverTLSConfig(s.cfg.TLS)
	if err != nil {
		s.log.Error("cannot load TLS certificate", "err", err)
		return reply(454, "4.7.0", "TLS not available due to local problem")
	}
	// CVE-2011-0411: whatever the client pipelined after STARTTLS in
	// plaintext must never be executed. It is dropped.
	if n := s.r.Buffered(); n > 0 {
		s.log.Warn("plaintext pipelined after STARTTLS dropped", "bytes", n)
		s.r.Discard(n)
	}
	s.write(reply(220, "2.0.0", "Ready to start TLS"))
	if err := s.flush(); err != nil {
		return s.hangup(err)
	}
	tc := tls.Server(withQuickAck(s.conn), conf)
	tc.SetDeadline(s.deadline(s.cfg.CommandTimeout.Duration))
	if err := tc.Handshake(); err != nil {
		s.log.Info("client TLS handshake failed", "err", err)
		return s.hangup(nil)
	}
	tc.SetDeadline(time.Time{})
	s.wmu.Lock() // the signal handler may be writing its 421
	s.conn = tc
	s.w = bufio.NewWriterSize(tc, 4096)
	s.wmu.Unlock()
	s.r = bufio.NewReaderSize(tc, clientBufferSize)
	s.tlsInfo = tlsSummary(tc.ConnectionState())
	// RFC 3207 §4.2: forget everything learnt before TLS; a new EHLO is due.
	s.resetSession()
	s.log.Debug("client TLS established", "tls", s.tlsInfo)
	return nil
}

// tlsVersions are the values of an [[upstream]]'s min_version.
var tlsVersions = map[string]uint16{"1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13}

// verifies reports whether the upstream's certificate is verified: with
// tls_verify, or with a ca_file, which is only of use for verifying.
func (p *UpstreamConfig) verifies() bool {
	return p.TLSVerify || p.CAFile != ""
}

// validateTLS checks the TLS keys of one [[upstream]] without reading the
// files they name (loadConfig runs for every session; `willi check` reads
// them through upstreamTLSConfig) and resolves their paths with resolve.
func (p *UpstreamConfig) validateTLS(resolve func(string) string) []string {
	var bad []string
	if p.MinVersion != "" {
		if _, ok := tlsVersions[p.MinVersion]; !ok {
			bad = append(bad, fmt.Sprintf("min_version %q: want \"1.2\" or \"1.3\"", p.MinVersion))
		}
	}
	if (p.CertFile == "") != (p.KeyFile == "") {
		bad = append(bad, "cert_file and key_file must be set together")
	}
	if p.ServerName != "" && (!validDomain(p.ServerName) || net.ParseIP(p.ServerName) != nil) {
		bad = append(bad, fmt.Sprintf("server_name %q is not a host name", p.ServerName))
	}
	if p.StartTLS == tlsNever {
		for _, k := range []struct{ key, val string }{
			{"ca_file", p.CAFile}, {"server_name", p.ServerName}, {"cert_file", p.CertFile},
			{"key_file", p.KeyFile}, {"min_version", p.MinVersion},
		} {
			if k.val != "" {
				bad = append(bad, fmt.Sprintf("%s with starttls = never", k.key))
			}
		}
	}
	p.CAFile = resolve(p.CAFile)
	p.CertFile = resolve(p.CertFile)
	p.KeyFile = resolve(p.KeyFile)
	return bad
}

// upstreamTLSConfig builds the TLS client configuration for an upstream
// from its [[upstream]] policy; host is the host part of the route's server.
// It reads ca_file, cert_file and key_file and reports every problem with
// them at once.
func upstreamTLSConfig(p UpstreamConfig, host string) (*tls.Config, error) {
	conf := &tls.Config{
		// The name sent as SNI and verified; Go sends no SNI for an
		// address and verifies the certificate's IP SANs instead.
		ServerName:         host,
		InsecureSkipVerify: !p.verifies(),
		MinVersion:         tls.VersionTLS12,
		// One process makes one session: there is nothing to resume.
		SessionTicketsDisabled: true,
	}
	if p.ServerName != "" {
		conf.ServerName = p.ServerName
	}
	if v, ok := tlsVersions[p.MinVersion]; ok {
		conf.MinVersion = v
	}
	var errs []error
	if p.CAFile != "" {
		pem, err := os.ReadFile(p.CAFile)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("ca_file: %w", err))
		default:
			conf.RootCAs = x509.NewCertPool()
			if !conf.RootCAs.AppendCertsFromPEM(pem) {
				errs = append(errs, fmt.Errorf("ca_file %s: no PEM certificate in it", p.CAFile))
			}
		}
	}
	if p.CertFile != "" && p.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(p.CertFile, p.KeyFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("cert_file %s, key_file %s: %w", p.CertFile, p.KeyFile, err))
		} else {
			conf.Certificates = []tls.Certificate{cert}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return conf, nil
}

// verifyUpstreamPeer verifies an upstream's certificate chain as the policy
// would (ca_file's CAs, else the system's; server_name, else host), whatever
// tls_verify says: `willi probe` reports what verification would find.
func verifyUpstreamPeer(p UpstreamConfig, host string, st *tls.ConnectionState) error {
	certs := st.PeerCertificates
	if len(certs) == 0 {
		return errors.New("no certificate")
	}
	p.TLSVerify = true
	conf, err := upstreamTLSConfig(p, host)
	if err != nil {
		return err
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err = certs[0].Verify(x509.VerifyOptions{DNSName: conf.ServerName, Roots: conf.RootCAs, Intermediates: inter})
	return err
}

// startTLS runs STARTTLS towards the upstream per its policy. Under
// "required" a missing or failed STARTTLS fails the recipient; a handshake
// failure is never retried in plaintext (security rule 13).
func (u *upstream) startTLS() *Reply {
	want := false
	switch u.policy.StartTLS {
	case tlsMirror:
		want = u.p.client.tls
	case tlsOpportunistic, tlsRequired:
		want = true
	}
	if !want {
		u.logPlaintext("starttls = " + u.policy.StartTLS)
		return nil
	}
	if !u.has("STARTTLS") {
		if u.policy.StartTLS == tlsRequired {
			u.p.log.Warn("upstream does not offer STARTTLS", "upstream", u.server.String(), "starttls", u.policy.StartTLS)
			return replyUpstreamNoTLS
		}
		u.p.log.Info("upstream does not offer STARTTLS, continuing in plaintext", "upstream", u.server.String(), "starttls", u.policy.StartTLS)
		u.logPlaintext("upstream does not offer STARTTLS")
		return nil
	}
	conf, err := upstreamTLSConfig(u.policy, u.server.Host)
	if err != nil {
		// A local problem: neither STARTTLS without what the operator
		// asked for nor plaintext, which the upstream may refuse to relay.
		u.p.log.Error("upstream TLS configuration unusable", "upstream", u.server.String(), "err", err)
		return replyUpstreamTLS
	}
	r, err := u.cmd("STARTTLS")
	if err != nil {
		// Includes bytes injected after the 220 (response injection).
		u.fault("STARTTLS", err)
		return replyUpstreamTLS
	}
	if r.Code != 220 {
		if u.policy.StartTLS == tlsRequired {
			u.p.log.Warn("upstream refused STARTTLS", "upstream", u.server.String(), "reply", r.Error())
			return replyUpstreamTLS
		}
		u.p.log.Info("upstream refused STARTTLS, continuing in plaintext", "upstream", u.server.String(), "reply", r.Error())
		u.logPlaintext("upstream refused STARTTLS")
		return nil
	}
	tc := tls.Client(withQuickAck(u.conn), conf)
	tc.SetDeadline(time.Now().Add(u.p.commandTimeout))
	if err := tc.Handshake(); err != nil {
		u.fault("TLS handshake", err)
		return replyUpstreamTLS
	}
	tc.SetDeadline(time.Time{})
	u.conn = tc
	u.r = bufio.NewReaderSize(tc, 4096)
	st := tc.ConnectionState()
	u.tlsState = &st
	// RFC 3207 §4.2: the pre-TLS capabilities are void; ask again.
	return u.regreet(u.p.hostname, true)
}

// logPlaintext says, when the client's session is encrypted, that its mail
// goes on to this upstream in plaintext, and why.
func (u *upstream) logPlaintext(reason string) {
	if !u.p.client.tls {
		return
	}
	u.p.log.Info("client used TLS, relayed in plaintext", "upstream", u.server.String(), "reason", reason)
}
