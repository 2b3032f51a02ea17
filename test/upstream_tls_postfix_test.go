package test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
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

// privateCA is a certificate authority made for one test.
type privateCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
	File string // the CA certificate, PEM
	n    int64
}

func newPrivateCA(t *testing.T, name string) *privateCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &privateCA{cert: cert, key: key, dir: t.TempDir(), n: 1}
	os.Chmod(ca.dir, 0o755) // Postfix's unprivileged daemons read from it
	ca.File = filepath.Join(ca.dir, "ca.pem")
	writePEMFile(t, ca.File, "CERTIFICATE", der)
	return ca
}

// issue writes a certificate for cn (and cn as DNS name) signed by the CA,
// for servers and clients, and returns the files and the certificate's
// SHA-256 fingerprint as Postfix writes it (AB:CD:...).
func (ca *privateCA) issue(t *testing.T, cn string) (certFile, keyFile, fingerprint string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca.n++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.n),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     []string{cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = filepath.Join(ca.dir, fmt.Sprintf("%s.crt", cn))
	keyFile = filepath.Join(ca.dir, fmt.Sprintf("%s.key", cn))
	writePEMFile(t, certFile, "CERTIFICATE", der)
	writePEMFile(t, keyFile, "PRIVATE KEY", keyDER)
	sum := sha256.Sum256(der)
	hexes := make([]string, len(sum))
	for i, b := range sum {
		hexes[i] = fmt.Sprintf("%02X", b)
	}
	return certFile, keyFile, strings.Join(hexes, ":")
}

func writePEMFile(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
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
	ca := newPrivateCA(t, "Relay CA")
	other := newPrivateCA(t, "Other CA")
	srvCert, srvKey, _ := ca.issue(t, "relay.example.net")
	clientCert, clientKey, clientFP := ca.issue(t, "willi.example.net")
	strangerCert, strangerKey, _ := ca.issue(t, "stranger.example.net")

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
