package smtptest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// GenCert writes a self-signed ECDSA P-256 certificate for cn (made with
// openssl) into dir and returns the certificate and key paths.
func GenCert(t testing.TB, dir, cn string) (certFile, keyFile string) {
	t.Helper()
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("openssl is not installed; install the test suite's peers with: sudo test/deps.sh")
	}
	certFile = filepath.Join(dir, cn+".crt")
	keyFile = filepath.Join(dir, cn+".key")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, openssl, "req", "-x509", "-newkey", "ec",
		"-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", keyFile,
		"-out", certFile, "-days", "2", "-subj", "/CN="+cn,
		"-addext", "subjectAltName=DNS:"+cn).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl req: %v\n%s", err, out)
	}
	os.Chmod(keyFile, 0o644) // readable by Postfix's unprivileged daemons if needed
	return certFile, keyFile
}
