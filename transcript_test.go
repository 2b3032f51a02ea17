package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Transcript tests: one dialogue per file in testdata/transcripts, run
// in-process over net.Pipe against scripted fake upstreams. Lines:
//
//	config: KEY = VALUE   a top-level config line (before the first action)
//	toml: LINE            a config line appended after the top-level keys
//	csv: LINE             a line of routes.csv (a csv mapping is added first;
//	                      without csv: or [[mapping]], a static route to up1)
//	C: TEXT               the client sends TEXT CRLF
//	C: <raw> "GO-QUOTED"  the client sends exact bytes
//	C: <close>            the client closes the connection
//	S: TEXT               the client must receive exactly this line
//	S~ REGEXP             the client must receive a line matching REGEXP
//	L~ REGEXP             willi's log must have a line matching REGEXP (checked
//	                      once the session ended)
//	S: <close>            willi must close the client connection
//	W: <connect>          willi must connect to upstream up1.test:25
//	W: TEXT               upstream 1 must receive exactly this line
//	W: <close>            willi must close upstream 1's connection
//	U: TEXT               upstream 1 sends TEXT CRLF
//	U: <raw> "GO-QUOTED"  upstream 1 sends exact bytes
//	U: <close>            upstream 1 closes the connection
//	W2:, U2: ...          the same for upstream 2 (up2.test:25), and so on
//	<sleep DURATION>      pause
//	<upstream N EXT...>   upstream N accepts and greets (EHLO with the
//	                      usual extensions plus EXT, "_" for a space)
//
// A dial to an upstream the script does not connect is refused. After the
// script the client closes; the upstreams may then only receive QUIT. Every
// line willi sends either way is checked for CRLF and, to the client, for
// the reply format (security rule G5).

const transcriptWait = 3 * time.Second

func TestTranscripts(t *testing.T) {
	files, err := filepath.Glob("testdata/transcripts/*.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no transcripts")
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			t.Parallel()
			runTranscript(t, f)
		})
	}
}

// peer is one side of a net.Pipe driven by the script. Reads run in a
// goroutine into a channel so that the script never deadlocks against
// willi's own blocking writes.
type peer struct {
	name  string
	conn  net.Conn
	lines chan string // each received line, CRLF included as received
	out   chan string // what the script sends, in order
}

func newPeer(name string, c net.Conn) *peer {
	p := &peer{name: name, conn: c, lines: make(chan string, 1024), out: make(chan string, 1024)}
	go func() {
		for b := range p.out {
			if _, err := c.Write([]byte(b)); err != nil {
				return
			}
		}
	}()
	go func() {
		r := bufio.NewReader(c)
		for {
			l, err := r.ReadString('\n')
			if l != "" {
				p.lines <- l
			}
			if err != nil {
				close(p.lines)
				return
			}
		}
	}()
	return p
}

func (p *peer) send(b string) { p.out <- b }

// next returns the next received line without its CRLF; eof when closed.
func (p *peer) next(t *testing.T, where string) (line string, eof bool) {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			return "", true
		}
		if !strings.HasSuffix(l, "\r\n") {
			t.Fatalf("%s: %s received a line without CRLF: %q", where, p.name, l)
		}
		return strings.TrimSuffix(l, "\r\n"), false
	case <-time.After(transcriptWait):
		t.Fatalf("%s: %s received nothing within %v", where, p.name, transcriptWait)
	}
	return "", false
}

var replyFormat = regexp.MustCompile(`^[2-5][0-9][0-9]([ -][\x20-\x7e]*)?$`)

// fakeNet hands willi's dials to the script's upstreams.
type fakeNet struct {
	mu      sync.Mutex
	wanted  map[string]bool // upstream names the script connects
	pending map[string]chan net.Conn
}

func (f *fakeNet) ch(name string) chan net.Conn {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pending[name] == nil {
		f.pending[name] = make(chan net.Conn, 4)
	}
	return f.pending[name]
}

func (f *fakeNet) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, _ := net.SplitHostPort(addr)
	name := strings.TrimSuffix(host, ".test")
	if !f.wanted[name] {
		return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("connection refused")}
	}
	a, b := net.Pipe()
	f.ch(name) <- b
	return a, nil
}

func runTranscript(t *testing.T, file string) {
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var top, tables, csv []string
	var script []string
	fn := &fakeNet{wanted: map[string]bool{}, pending: map[string]chan net.Conn{}}
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimRight(l, "\r")
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "config: "):
			top = append(top, strings.TrimPrefix(l, "config: "))
		case strings.HasPrefix(l, "toml: "):
			tables = append(tables, strings.TrimPrefix(l, "toml: "))
		case strings.HasPrefix(l, "csv: "):
			csv = append(csv, strings.TrimPrefix(l, "csv: "))
		case strings.HasPrefix(l, "<upstream"):
			// <upstream N [EXT ...]>: connect and greet with a plain ESMTP
			// server offering PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
			// ENHANCEDSTATUSCODES and the extra keywords given.
			f := strings.Fields(strings.Trim(l, "<>"))
			n := "1"
			if len(f) > 1 {
				n = f[1]
			}
			w, u := "W"+strings.TrimPrefix(n, "1"), "U"+strings.TrimPrefix(n, "1")
			fn.wanted["up"+n] = true
			script = append(script, w+": <connect>", u+": 220 up"+n+".test ESMTP", w+": EHLO mx.test",
				u+": 250-up"+n+".test", u+": 250-PIPELINING", u+": 250-SIZE 100000000", u+": 250-8BITMIME", u+": 250-SMTPUTF8")
			for _, e := range f[2:] {
				script = append(script, u+": 250-"+strings.ReplaceAll(e, "_", " "))
			}
			script = append(script, u+": 250 ENHANCEDSTATUSCODES")
		default:
			script = append(script, l)
			if m := regexp.MustCompile(`^W(\d*): <connect>`).FindStringSubmatch(l); m != nil {
				fn.wanted["up"+orOne(m[1])] = true
			}
		}
	}
	dir := t.TempDir()
	// The script's config: lines replace these defaults.
	conf := strings.Join(top, "\n") + "\n"
	for _, d := range []string{`hostname = "mx.test"`, `command_timeout = "2s"`, `upstream_command_timeout = "2s"`, `upstream_data_timeout = "2s"`} {
		key, _, _ := strings.Cut(d, " ")
		if !regexp.MustCompile(`(?m)^` + key + `\s*=`).MatchString(conf) {
			conf = d + "\n" + conf
		}
	}
	hasMapping := false
	for _, l := range tables {
		hasMapping = hasMapping || strings.TrimSpace(l) == "[[mapping]]"
	}
	if len(csv) > 0 {
		os.WriteFile(filepath.Join(dir, "routes.csv"), []byte(strings.Join(csv, "\n")+"\n"), 0o644)
		conf += "[[mapping]]\ntype = \"csv\"\nfile = \"routes.csv\"\n"
	}
	if !hasMapping && len(csv) == 0 {
		conf += "[[mapping]]\ntype = \"static\"\nserver = \"up1.test:25\"\n"
	}
	conf += strings.Join(tables, "\n") + "\n"
	if err := os.WriteFile(filepath.Join(dir, "willi.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(filepath.Join(dir, "willi.conf"))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, conf)
	}

	srv, cli := net.Pipe()
	var logBuf syncBuffer
	log := slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := newSession(cfg, srv, log)
	s.clientIP, s.clientPort = net.ParseIP("192.0.2.1").To4(), 4321
	s.localAddr = &net.TCPAddr{IP: net.ParseIP("192.0.2.10").To4(), Port: 25}
	s.dial = fn.dial
	s.lookupName = func(context.Context, net.IP) string { return "client.example.org" }
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.serve()
	}()
	defer func() {
		if t.Failed() {
			t.Logf("willi's log:\n%s", logBuf.String())
		}
	}()

	client := newPeer("client", cli)
	ups := map[string]*peer{}
	upstream := func(where, n string) *peer {
		p := ups["up"+orOne(n)]
		if p == nil {
			t.Fatalf("%s: upstream %s not connected", where, orOne(n))
		}
		return p
	}
	action := regexp.MustCompile(`^([CSUW])(\d*)([:~]) ?(.*)$`)
	var logWants []string // L~ lines, with where they stand
	for i, l := range script {
		where := fmt.Sprintf("%s:%d %q", filepath.Base(file), i+1, l)
		if re, ok := strings.CutPrefix(l, "L~ "); ok {
			logWants = append(logWants, where, re)
			continue
		}
		if strings.HasPrefix(l, "<sleep ") {
			d, err := time.ParseDuration(strings.TrimSuffix(strings.TrimPrefix(l, "<sleep "), ">"))
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			time.Sleep(d)
			continue
		}
		m := action.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("%s: bad script line", where)
		}
		who, n, sep, text := m[1], m[2], m[3], m[4]
		switch {
		case who == "C" && text == "<close>":
			cli.Close()
		case who == "C":
			client.send(payload(t, where, text))
		case who == "S" && text == "<close>":
			if got, eof := client.next(t, where); !eof {
				t.Fatalf("%s: want close, client got %q", where, got)
			}
		case who == "S":
			got, eof := client.next(t, where)
			if eof {
				t.Fatalf("%s: client connection closed", where)
			}
			if !replyFormat.MatchString(got) {
				t.Fatalf("%s: malformed reply %q", where, got)
			}
			if sep == "~" {
				if !regexp.MustCompile(text).MatchString(got) {
					t.Fatalf("%s: client got %q", where, got)
				}
			} else if got != text {
				t.Fatalf("%s: client got %q", where, got)
			}
		case who == "W" && text == "<connect>":
			select {
			case c := <-fn.ch("up" + orOne(n)):
				ups["up"+orOne(n)] = newPeer("upstream "+orOne(n), c)
			case <-time.After(transcriptWait):
				t.Fatalf("%s: willi did not connect", where)
			}
		case who == "W" && text == "<close>":
			if got, eof := upstream(where, n).next(t, where); !eof {
				t.Fatalf("%s: want close, upstream got %q", where, got)
			}
		case who == "W":
			got, eof := upstream(where, n).next(t, where)
			if eof {
				t.Fatalf("%s: upstream connection closed", where)
			}
			if got != text {
				t.Fatalf("%s: upstream got %q", where, got)
			}
		case who == "U" && text == "<close>":
			upstream(where, n).conn.Close()
		case who == "U":
			upstream(where, n).send(payload(t, where, text))
		default:
			t.Fatalf("%s: bad script line", where)
		}
	}

	// The end: the client leaves; each upstream may only get QUIT now.
	cli.Close()
	deadline := time.After(transcriptWait)
	for name, p := range ups {
		for open := true; open; {
			select {
			case l, ok := <-p.lines:
				if !ok {
					open = false
					break
				}
				if l != "QUIT\r\n" {
					t.Fatalf("after the script, %s received %q", name, l)
				}
				p.send("221 2.0.0 Bye\r\n")
			case <-deadline:
				t.Fatalf("after the script, willi did not close %s", name)
			}
		}
	}
	select {
	case <-done:
	case <-time.After(transcriptWait):
		t.Fatal("session did not end after the client closed")
	}
	for l := range client.lines {
		if !strings.HasPrefix(l, "221 ") && !strings.HasPrefix(l, "421 ") {
			t.Fatalf("unexpected reply after the script: %q", l)
		}
	}
	for i := 0; i < len(logWants); i += 2 {
		if !regexp.MustCompile(`(?m)` + logWants[i+1]).MatchString(logBuf.String()) {
			t.Fatalf("%s: no log line matches", logWants[i])
		}
	}
}

func orOne(n string) string {
	if n == "" {
		return "1"
	}
	return n
}

// payload is TEXT CRLF, or the exact bytes of <raw> "GO-QUOTED".
func payload(t *testing.T, where, text string) string {
	if rest, ok := strings.CutPrefix(text, "<raw> "); ok {
		s, err := strconv.Unquote(rest)
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		return s
	}
	return text + "\r\n"
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var _ io.Writer = (*syncBuffer)(nil)
