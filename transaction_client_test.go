package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"willi/internal/smtptest"
)

// Running one session of TestTransactionInvariant: willi in-process on a
// socket pair, the generated client script, the fault-injecting upstreams,
// and the report of what happened.

// ivEnv is what every session shares: the CSV routes and the certificate.
type ivEnv struct {
	dir  string
	conf string
}

func newIVEnv(t testing.TB) *ivEnv {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile := smtptest.GenCert(t, dir, "mx.test")
	routes := "pattern,server\n" + ivDomain1 + "," + ivUpstream1 + "\n" + ivDomain2 + "," + ivUpstream2 + "\n"
	if err := os.WriteFile(filepath.Join(dir, "routes.csv"), []byte(routes), 0o644); err != nil {
		t.Fatal(err)
	}
	// Short upstream timeouts: a stall costs one of them.
	conf := fmt.Sprintf(`hostname = "mx.test"
command_timeout = "5s"
upstream_connect_timeout = "250ms"
upstream_command_timeout = "250ms"
upstream_data_timeout = "250ms"
%s
[tls]
cert_file = %q
key_file = %q

[[mapping]]
type = "csv"
file = "routes.csv"
`, os.Getenv("WILLI_INVARIANT_CONF"), certFile, keyFile)
	e := &ivEnv{dir: dir, conf: conf}
	if _, err := e.config(); err != nil {
		t.Fatalf("config: %v\n%s", err, conf)
	}
	return e
}

// config is parsed per session: a session may keep state in it.
func (e *ivEnv) config() (*Config, error) {
	return parseConfig(e.conf, filepath.Join(e.dir, "willi.conf"))
}

// ivEntry is one client command and willi's reply to it.
type ivEntry struct {
	cmd   ivCmd
	reply string // every line, CRLF included
	code  int
	seq   int64 // for a 354: the upstream 354s sent before the client read it
}

// ivProblem is one violation, by class (a)-(f).
type ivProblem struct{ class, text string }

// ivResult is one session run.
type ivResult struct {
	script     *ivScript
	entries    []ivEntry
	transcript strings.Builder
	log        string
	ups        *ivUpstreams
	problems   []ivProblem
}

func (r *ivResult) problem(class, format string, a ...any) {
	r.problems = append(r.problems, ivProblem{class, fmt.Sprintf(format, a...)})
}

// ivClient is the client end of a session.
type ivClient struct {
	res  *ivResult
	conn net.Conn
	br   *bufio.Reader
}

// ivRun runs one session and checks it.
func ivRun(t testing.TB, env *ivEnv, sc *ivScript) *ivResult {
	res := &ivResult{script: sc}
	cfg, err := env.config()
	if err != nil {
		res.problem("d", "config: %v", err)
		return res
	}
	if sc.fanout {
		cfg.SplitRecipients = splitFanout
	}
	srv, cli := fzSocketPair(t)
	ups := &ivUpstreams{t: t, faults: sc.faults, xclient: sc.xclient, plain: sc.plain, seq: new(atomic.Int64)}
	res.ups = ups
	logBuf, done := fzServe(cfg, srv, ups.dial)

	c := &ivClient{res: res, conn: cli, br: bufio.NewReaderSize(cli, 4096)}
	if b, ok := c.read(); !ok || !strings.HasPrefix(b, "220 ") {
		res.problem("d", "banner %q", b)
	} else {
		c.script(sc, ups)
	}
	cli.Close()
	select {
	case <-done:
	case <-time.After(ivWait):
		res.problem("d", "hang: the session did not end within %v of the client's close", ivWait)
	}
	if !ups.wait() {
		res.problem("d", "hang: an upstream connection still open %v after the session", ivWait)
	}
	res.log = logBuf.String()
	for _, p := range res.problems {
		if strings.HasPrefix(p.text, "hang") {
			return res // the records may still change: no oracle
		}
	}
	ivCheck(res)
	if skip := os.Getenv("WILLI_INVARIANT_SKIP"); skip != "" {
		kept := res.problems[:0]
		for _, p := range res.problems {
			if !strings.Contains(skip, p.class) {
				kept = append(kept, p)
			}
		}
		res.problems = kept
	}
	return res
}

// script sends the groups, one write each, and reads a reply per command;
// a DATA answered 354 is followed by its message and end of data.
func (c *ivClient) script(sc *ivScript, ups *ivUpstreams) {
	for _, g := range sc.groups {
		var b strings.Builder
		for _, cmd := range g {
			b.WriteString(cmd.line + "\r\n")
			fmt.Fprintf(&c.res.transcript, "C: %s\n", cmd.line)
		}
		if !c.write(b.String()) {
			return
		}
		for _, cmd := range g {
			rep, ok := c.read()
			if !ok {
				c.res.problem("d", "willi closed the connection without a 421 or 221")
				return
			}
			e := ivEntry{cmd: cmd, reply: rep, code: ivCode(rep)}
			if cmd.kind != ivGreet {
				c.checkEnhanced(rep)
			}
			if cmd.kind == ivData && e.code == 354 {
				e.seq = ups.seq.Load()
			}
			c.res.entries = append(c.res.entries, e)
			if c.ends(e) {
				return
			}
			switch {
			case cmd.kind == ivStartTLS && e.code == 220:
				tc := tls.Client(c.conn, &tls.Config{ServerName: "mx.test", InsecureSkipVerify: true})
				tc.SetDeadline(time.Now().Add(ivWait))
				if err := tc.Handshake(); err != nil {
					c.res.problem("d", "client TLS handshake: %v", err)
					return
				}
				tc.SetDeadline(time.Time{})
				c.conn, c.br = tc, bufio.NewReaderSize(tc, 4096)
				c.res.transcript.WriteString("-- TLS established\n")
			case cmd.kind == ivData && e.code == 354:
				fmt.Fprintf(&c.res.transcript, "C: (%d octets of message)\nC: .\n", len(cmd.msg))
				if !c.write(cmd.msg + ".\r\n") {
					return
				}
				rep, ok := c.read()
				if !ok {
					return
				}
				c.checkEnhanced(rep)
				dot := ivEntry{cmd: ivCmd{kind: ivDot, line: ".", plain: cmd.plain}, reply: rep, code: ivCode(rep)}
				c.res.entries = append(c.res.entries, dot)
				if c.ends(dot) {
					return
				}
			}
		}
	}
}

// ends reports a reply after which willi must close: then it must.
func (c *ivClient) ends(e ivEntry) bool {
	if e.code != 421 && e.code != 221 {
		return false
	}
	if rest, ok := c.read(); ok {
		c.res.problem("d", "reply %q after %q", rest, e.reply)
	}
	return true
}

// write sends b; when willi has closed, its last reply must be a 421.
func (c *ivClient) write(b string) bool {
	c.conn.SetWriteDeadline(time.Now().Add(ivWait))
	if _, err := c.conn.Write([]byte(b)); err != nil {
		if rep, ok := c.read(); !ok || ivCode(rep) != 421 {
			c.res.problem("d", "willi closed the connection without 421 (client write: %v)", err)
		}
		return false
	}
	return true
}

// read reads one reply and checks its form; false when willi closed.
func (c *ivClient) read() (string, bool) {
	var out strings.Builder
	for {
		c.conn.SetReadDeadline(time.Now().Add(ivWait))
		l, err := c.br.ReadString('\n')
		if err != nil {
			if os.IsTimeout(err) {
				c.res.problem("d", "hang: no reply within %v", ivWait)
			} else if l != "" || out.Len() > 0 {
				c.res.problem("d", "connection closed inside a reply: %q", out.String()+l)
			}
			c.res.transcript.WriteString("S: <closed>\n")
			return "", false
		}
		c.res.transcript.WriteString("S: " + strings.TrimSuffix(l, "\r\n") + "\n")
		if !strings.HasSuffix(l, "\r\n") || len(l) > 512 || len(l) < 6 || !replyFormat.MatchString(strings.TrimSuffix(l, "\r\n")) {
			c.res.problem("d", "malformed reply line %q", l)
		}
		out.WriteString(l)
		if len(l) > 3 && l[3] == ' ' {
			return out.String(), true
		}
		if len(l) < 4 || l[3] != '-' {
			return out.String(), true
		}
	}
}

// checkEnhanced: every line of a 2xx, 4xx or 5xx reply but the greeting's
// carries an enhanced status code of its class (RFC 2034).
func (c *ivClient) checkEnhanced(rep string) {
	for _, l := range strings.SplitAfter(rep, "\r\n") {
		if len(l) < 6 || l[0] == '3' {
			continue
		}
		if e, _, _ := strings.Cut(l[4:len(l)-2], " "); !isEnhanced(e) || e[0] != l[0] {
			c.res.problem("d", "no enhanced status code in %q", l)
		}
	}
}

func ivCode(rep string) int {
	n, _ := strconv.Atoi(rep[:3])
	return n
}

func (r *ivResult) report() string {
	var b strings.Builder
	fmt.Fprintf(&b, "=== %s\nproblems:\n", r.script.seed)
	for _, p := range r.problems {
		fmt.Fprintf(&b, "  (%s) %s\n", p.class, p.text)
	}
	fmt.Fprintf(&b, "script (+ starts a write of several commands, | continues it):\n%s", r.script)
	fmt.Fprintf(&b, "client transcript:\n%s", r.transcript.String())
	fmt.Fprintf(&b, "willi's log:\n%s", r.log)
	if r.ups != nil {
		for _, c := range r.ups.conns {
			f := "no fault"
			if c.fault != nil {
				f = c.fault.String()
			}
			fmt.Fprintf(&b, "upstream conn %d (%s, %s):\n%s", c.n, c.server, f, c.log.String())
		}
	}
	return b.String()
}
