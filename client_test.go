package main

// The in-process tests' side of a client: a raw SMTP client that keeps every
// reply line as received, a generated certificate and a refused port. The
// black-box tests in test/ have the full harness (built binary, real peers).

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// smtpReply is one reply: its code and its raw lines without CRLF.
type smtpReply struct {
	Code  int
	Lines []string
}

// String is the reply as sent, lines joined by "\n".
func (r smtpReply) String() string { return strings.Join(r.Lines, "\n") }

// smtpClient speaks SMTP line by line over any net.Conn, keeping the reply
// lines exactly as received.
type smtpClient struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

func newSMTPClient(t testing.TB, conn net.Conn) *smtpClient {
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	return &smtpClient{t: t, conn: conn, r: bufio.NewReader(conn)}
}

// readReply reads one (possibly multi-line) reply.
func (c *smtpClient) readReply() (smtpReply, error) {
	var rep smtpReply
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			if line != "" {
				rep.Lines = append(rep.Lines, line)
			}
			return rep, err
		}
		if !strings.HasSuffix(line, "\r\n") {
			return rep, fmt.Errorf("reply line not CRLF-terminated: %q", line)
		}
		line = strings.TrimSuffix(line, "\r\n")
		rep.Lines = append(rep.Lines, line)
		if len(line) < 4 || (line[3] != ' ' && line[3] != '-') {
			return rep, fmt.Errorf("malformed reply line %q", line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil {
			return rep, fmt.Errorf("malformed reply line %q", line)
		}
		if rep.Code != 0 && code != rep.Code {
			return rep, fmt.Errorf("reply code changed within a reply: %q", rep.Lines)
		}
		rep.Code = code
		if line[3] == ' ' {
			return rep, nil
		}
	}
}

// expect reads a reply and fails the test unless its code is code.
func (c *smtpClient) expect(code int) smtpReply {
	c.t.Helper()
	rep, err := c.readReply()
	if err != nil {
		c.t.Fatalf("reading reply (want %d): %v (got %q)", code, err, rep.Lines)
	}
	if rep.Code != code {
		c.t.Fatalf("got reply %q, want code %d", rep.Lines, code)
	}
	return rep
}

// send writes one command line (CRLF added).
func (c *smtpClient) send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, line+"\r\n"); err != nil {
		c.t.Fatalf("sending %q: %v", line, err)
	}
}

// cmd sends a command and reads its reply.
func (c *smtpClient) cmd(line string) smtpReply {
	c.t.Helper()
	c.send(line)
	rep, err := c.readReply()
	if err != nil {
		c.t.Fatalf("reply to %q: %v (got %q)", line, err, rep.Lines)
	}
	return rep
}

// starttls upgrades the connection after a 220 to STARTTLS.
func (c *smtpClient) starttls(serverName string) *tls.ConnectionState {
	c.t.Helper()
	if rep := c.cmd("STARTTLS"); rep.Code != 220 {
		c.t.Fatalf("STARTTLS: %q", rep.Lines)
	}
	if c.r.Buffered() != 0 {
		c.t.Fatalf("server sent bytes after its 220 to STARTTLS")
	}
	tc := tls.Client(c.conn, &tls.Config{ServerName: serverName, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.conn = tc
	c.r = bufio.NewReader(tc)
	st := tc.ConnectionState()
	return &st
}

// data sends DATA, the raw message (which must already be dot-stuffed and
// CRLF-terminated) and the end of data, returning the final reply.
func (c *smtpClient) data(raw []byte) smtpReply {
	c.t.Helper()
	if rep := c.cmd("DATA"); rep.Code != 354 {
		c.t.Fatalf("DATA: %q", rep.Lines)
	}
	if _, err := c.conn.Write(raw); err != nil {
		c.t.Fatalf("writing message: %v", err)
	}
	if _, err := io.WriteString(c.conn, ".\r\n"); err != nil {
		c.t.Fatalf("writing end of data: %v", err)
	}
	rep, err := c.readReply()
	if err != nil {
		c.t.Fatalf("reply to end of data: %v (%q)", err, rep.Lines)
	}
	return rep
}

// genCert writes a self-signed ECDSA P-256 certificate for cn (made with
// openssl) into dir and returns the certificate and key paths.
func genCert(t testing.TB, dir, cn string) (certFile, keyFile string) {
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
	return certFile, keyFile
}

// deadPort returns a loopback port on which nothing listens (connections are
// refused): one that was free a moment ago.
func deadPort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("deadPort: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
