package test

import (
	"crypto/sha256"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"willi/internal/smtptest"
)

// The [[upstream]] TLS keys against a real Postfix upstream that holds a
// certificate from a private CA and authorises relays by client
// certificate (smtpd_tls_ask_ccert, permit_tls_clientcerts with the
// certificate's SHA-256 fingerprint in relay_clientcerts).

// postfixFingerprint is the SHA-256 fingerprint of the certificate in
// certFile as Postfix writes it (AB:CD:...), for relay_clientcerts.
func postfixFingerprint(t *testing.T, certFile string) string {
	t.Helper()
	raw, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		t.Fatalf("%s: no PEM block", certFile)
	}
	sum := sha256.Sum256(block.Bytes)
	hexes := make([]string, len(sum))
	for i, b := range sum {
		hexes[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(hexes, ":")
}

// postconf sets main.cf parameters of a running instance and reloads it.
func (p *postfixInstance) postconf(t *testing.T, settings ...string) {
	t.Helper()
	args := append([]string{"-c", p.ConfigDir, "-e"}, settings...)
	if out, err := runCmd(30*time.Second, nil, needProgram(t, "postconf"), args...); err != nil {
		t.Fatalf("postconf: %v\n%s", err, out)
	}
	if out, err := runCmd(30*time.Second, nil, needProgram(t, "postfix"), "-c", p.ConfigDir, "reload"); err != nil {
		t.Fatalf("postfix reload: %v\n%s", err, out)
	}
	// The reload is asynchronous: new smtpd processes read the new
	// settings; give the master a moment to retire the old ones.
	time.Sleep(300 * time.Millisecond)
}

// TestUpstreamTLSPostfixClientCertificate: willi relays to a Postfix that
// accepts mail only from clients presenting a certificate it knows, over an
// address route verified with a private CA and server_name.
func TestUpstreamTLSPostfixClientCertificate(t *testing.T) {
	ca := smtptest.NewCA(t, "Relay CA")
	other := smtptest.NewCA(t, "Other CA")
	srvCert, srvKey := ca.Issue(t, "relay.example.net", "relay.example.net")
	clientCert, clientKey := ca.Issue(t, "willi.example.net", "willi.example.net")
	clientFP := postfixFingerprint(t, clientCert)
	strangerCert, strangerKey := ca.Issue(t, "stranger.example.net", "stranger.example.net")

	up := startPostfix(t, postfixOpts{TLS: true, XClient: true})
	relayCerts := filepath.Join(up.ConfigDir, "relay_clientcerts")
	if err := os.WriteFile(relayCerts, []byte(clientFP+" willi.example.net\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := runCmd(30*time.Second, nil, needProgram(t, "postmap"), "-c", up.ConfigDir, "hash:"+relayCerts); err != nil {
		t.Fatalf("postmap: %v\n%s", err, out)
	}
	up.postconf(t,
		"smtpd_tls_cert_file="+srvCert, "smtpd_tls_key_file="+srvKey,
		"smtpd_tls_CAfile="+ca.File,
		"smtpd_tls_ask_ccert=yes",
		"smtpd_tls_fingerprint_digest=sha256",
		"relay_clientcerts=hash:"+relayCerts,
		"smtpd_recipient_restrictions=permit_tls_clientcerts, reject",
	)

	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "willi.conf")
	w := startWilliActivated(t, buildWilli(t), writeConfig(t, dir, "[[mapping]]\ntype = \"static\"\nserver = \"127.0.0.1:1\"\n"), williLaunchOpts{Inetd: true})
	// willi reads its config per connection: each case rewrites it.
	setPolicy := func(policy string) {
		conf := fmt.Sprintf("hostname = \"willi.test\"\n[[mapping]]\ntype = \"static\"\nserver = %q\n"+
			"[[upstream]]\nserver = %q\nstarttls = \"required\"\n%s\n", up.Addr, up.Addr, policy)
		if err := os.WriteFile(cfgPath, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// send runs one transaction to alice and returns RCPT's reply and, when
	// accepted, the delivered message.
	send := func(t *testing.T) (smtptest.Reply, string) {
		t.Helper()
		c := dialSMTP(t, w.Addr, "")
		c.Expect(220)
		c.Want250("EHLO client.example.org")
		c.Want250("MAIL FROM:<a@example.org>")
		rcpt := c.Cmd("RCPT TO:<alice@example.org>")
		if rcpt.Code != 250 {
			c.Cmd("QUIT")
			return rcpt, ""
		}
		if rep := c.Data([]byte("Subject: client certificate\r\n\r\nhello\r\n")); rep.Code != 250 {
			t.Fatalf("end of data: %q", rep.Lines)
		}
		c.Cmd("QUIT")
		return rcpt, up.waitMail(t, "alice", 30*time.Second)
	}
	full := fmt.Sprintf("ca_file = %q\nserver_name = \"relay.example.net\"\ncert_file = %q\nkey_file = %q\nmin_version = \"1.3\"",
		ca.File, clientCert, clientKey)

	t.Run("accepted", func(t *testing.T) {
		setPolicy(full)
		rcpt, msg := send(t)
		if rcpt.Code != 250 {
			t.Fatalf("RCPT: %q", rcpt.Lines)
		}
		if rec := mailHeaders(msg, "Received"); len(rec) == 0 || !strings.Contains(rec[0], "TLSv1.3") {
			t.Errorf("upstream's Received: does not say TLS 1.3: %q", rec)
		}
		up.waitLog(t, "Trusted TLS connection established from", 10*time.Second)
	})
	t.Run("no-client-certificate", func(t *testing.T) {
		setPolicy(fmt.Sprintf("ca_file = %q\nserver_name = \"relay.example.net\"", ca.File))
		rcpt, _ := send(t)
		if rcpt.Code != 554 || !strings.Contains(rcpt.Last(), "Access denied") {
			t.Fatalf("RCPT: %q, want the upstream's 554 Access denied", rcpt.Lines)
		}
	})
	t.Run("unknown-client-certificate", func(t *testing.T) {
		setPolicy(fmt.Sprintf("ca_file = %q\nserver_name = \"relay.example.net\"\ncert_file = %q\nkey_file = %q", ca.File, strangerCert, strangerKey))
		rcpt, _ := send(t)
		if rcpt.Code != 554 {
			t.Fatalf("RCPT: %q, want the upstream's 554", rcpt.Lines)
		}
	})
	for _, tc := range []struct{ name, policy string }{
		{"other-ca", fmt.Sprintf("ca_file = %q\nserver_name = \"relay.example.net\"\ncert_file = %q\nkey_file = %q", other.File, clientCert, clientKey)},
		{"server_name-mismatch", fmt.Sprintf("ca_file = %q\nserver_name = \"mail.example.net\"\ncert_file = %q\nkey_file = %q", ca.File, clientCert, clientKey)},
		{"address-route-without-server_name", fmt.Sprintf("ca_file = %q\ncert_file = %q\nkey_file = %q", ca.File, clientCert, clientKey)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := strings.Count(up.Log(), "MAIL FROM")
			williLog := func() string { b, _ := os.ReadFile(w.StderrPath); return string(b) }
			verifyFailures := strings.Count(williLog(), "tls: failed to verify certificate")
			setPolicy(tc.policy)
			rcpt, _ := send(t)
			if rcpt.Code != 451 || !strings.HasPrefix(rcpt.Last(), "4.7.5") {
				t.Fatalf("RCPT: %q, want 451 4.7.5", rcpt.Lines)
			}
			if after := strings.Count(up.Log(), "MAIL FROM"); after != before {
				t.Errorf("the upstream saw a transaction")
			}
			if strings.Count(williLog(), "tls: failed to verify certificate") == verifyFailures {
				t.Errorf("willi's log does not say the certificate failed verification")
			}
		})
	}
	// An upstream that speaks at most TLS 1.2.
	up.postconf(t, "smtpd_tls_protocols=>=TLSv1.2, <=TLSv1.2", "smtpd_tls_mandatory_protocols=>=TLSv1.2, <=TLSv1.2")
	t.Run("min_version-1.3-vs-tls12-upstream", func(t *testing.T) {
		setPolicy(full)
		rcpt, _ := send(t)
		if rcpt.Code != 451 {
			t.Fatalf("RCPT: %q, want 451", rcpt.Lines)
		}
		log, _ := os.ReadFile(w.StderrPath)
		if !strings.Contains(string(log), "protocol version") {
			t.Errorf("willi's log does not say the handshake failed on the protocol version")
		}
	})
	t.Run("min_version-1.2-vs-tls12-upstream", func(t *testing.T) {
		setPolicy(strings.Replace(full, `min_version = "1.3"`, `min_version = "1.2"`, 1))
		rcpt, msg := send(t)
		if rcpt.Code != 250 {
			t.Fatalf("RCPT: %q", rcpt.Lines)
		}
		if rec := mailHeaders(msg, "Received"); len(rec) == 0 || !strings.Contains(rec[0], "TLSv1.2") {
			t.Errorf("upstream's Received: does not say TLS 1.2: %q", rec)
		}
	})
}
