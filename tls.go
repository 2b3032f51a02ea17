package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
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
	}, nil
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
	tc := tls.Server(s.conn, conf)
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
		return nil
	}
	if !u.has("STARTTLS") {
		if u.policy.StartTLS == tlsRequired {
			u.p.log.Warn("upstream does not offer STARTTLS", "upstream", u.server.String(), "starttls", u.policy.StartTLS)
			return replyUpstreamNoTLS
		}
		u.p.log.Info("upstream does not offer STARTTLS, continuing in plaintext", "upstream", u.server.String(), "starttls", u.policy.StartTLS)
		return nil
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
		return nil
	}
	conf := &tls.Config{
		ServerName:         u.server.Host,
		InsecureSkipVerify: !u.policy.TLSVerify,
		MinVersion:         tls.VersionTLS12,
	}
	tc := tls.Client(u.conn, conf)
	tc.SetDeadline(time.Now().Add(u.p.commandTimeout))
	if err := tc.Handshake(); err != nil {
		u.fault("TLS handshake", err)
		return replyUpstreamTLS
	}
	tc.SetDeadline(time.Time{})
	u.conn = tc
	u.r = bufio.NewReaderSize(tc, 4096)
	u.tls = tlsSummary(tc.ConnectionState())
	// RFC 3207 §4.2: the pre-TLS capabilities are void; ask again.
	return u.regreet(u.p.hostname, true)
}
