package smtptest

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Reply is one reply: its code and its raw lines without CRLF.
type Reply struct {
	Code  int
	Lines []string
}

// String is the reply as sent, lines joined by "\n".
func (r Reply) String() string { return strings.Join(r.Lines, "\n") }

// Last is the text of the last line after "NNN ".
func (r Reply) Last() string {
	if len(r.Lines) == 0 {
		return ""
	}
	l := r.Lines[len(r.Lines)-1]
	if len(l) > 4 {
		return l[4:]
	}
	return ""
}

// Client speaks SMTP line by line over any net.Conn, keeping the reply
// lines exactly as received. Tests that go below the command level (a TLS
// handshake of their own, bytes that are not a command) use Conn and
// Reader directly; whoever replaces Conn replaces Reader with it.
type Client struct {
	t      testing.TB
	Conn   net.Conn
	Reader *bufio.Reader
}

// NewClient returns a client on conn, whose deadline it sets 60 s ahead so
// that a silent server fails the test instead of hanging it.
func NewClient(t testing.TB, conn net.Conn) *Client {
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	return &Client{t: t, Conn: conn, Reader: bufio.NewReader(conn)}
}

// ReadReply reads one (possibly multi-line) reply.
func (c *Client) ReadReply() (Reply, error) {
	var rep Reply
	for {
		line, err := c.Reader.ReadString('\n')
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

// Expect reads a reply and fails the test unless its code is code.
func (c *Client) Expect(code int) Reply {
	c.t.Helper()
	rep, err := c.ReadReply()
	if err != nil {
		c.t.Fatalf("reading reply (want %d): %v (got %q)", code, err, rep.Lines)
	}
	if rep.Code != code {
		c.t.Fatalf("got reply %q, want code %d", rep.Lines, code)
	}
	return rep
}

// Send writes one command line (CRLF added).
func (c *Client) Send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.Conn, line+"\r\n"); err != nil {
		c.t.Fatalf("sending %q: %v", line, err)
	}
}

// Cmd sends a command and reads its reply.
func (c *Client) Cmd(line string) Reply {
	c.t.Helper()
	c.Send(line)
	rep, err := c.ReadReply()
	if err != nil {
		c.t.Fatalf("reply to %q: %v (got %q)", line, err, rep.Lines)
	}
	return rep
}

// Want250 sends each command and fails the test unless it is answered 250.
func (c *Client) Want250(lines ...string) {
	c.t.Helper()
	for _, l := range lines {
		if r := c.Cmd(l); r.Code != 250 {
			c.t.Fatalf("%s: %q", l, r.Lines)
		}
	}
}

// StartTLS upgrades the connection after a 220 to STARTTLS.
func (c *Client) StartTLS(serverName string) *tls.ConnectionState {
	c.t.Helper()
	if rep := c.Cmd("STARTTLS"); rep.Code != 220 {
		c.t.Fatalf("STARTTLS: %q", rep.Lines)
	}
	if c.Reader.Buffered() != 0 {
		c.t.Fatalf("server sent bytes after its 220 to STARTTLS")
	}
	tc := tls.Client(c.Conn, &tls.Config{ServerName: serverName, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.Conn = tc
	c.Reader = bufio.NewReader(tc)
	st := tc.ConnectionState()
	return &st
}

// Data sends DATA, the raw message (which must already be dot-stuffed and
// CRLF-terminated) and the end of data, returning the final reply.
func (c *Client) Data(raw []byte) Reply {
	c.t.Helper()
	if rep := c.Cmd("DATA"); rep.Code != 354 {
		c.t.Fatalf("DATA: %q", rep.Lines)
	}
	if _, err := c.Conn.Write(raw); err != nil {
		c.t.Fatalf("writing message: %v", err)
	}
	if _, err := io.WriteString(c.Conn, ".\r\n"); err != nil {
		c.t.Fatalf("writing end of data: %v", err)
	}
	rep, err := c.ReadReply()
	if err != nil {
		c.t.Fatalf("reply to end of data: %v (%q)", err, rep.Lines)
	}
	return rep
}
