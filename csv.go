package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// csvMaxLine bounds a physical line, so that a file's memory per row is fixed.
const csvMaxLine = 128 << 10

// csvMapping routes by a CSV file with "pattern" and "server" columns. With
// an index folder it answers from the compiled index (csvindex.go) when that
// is current; else it streams the whole file through the one parser,
// readCSV: a file malformed anywhere fails every lookup alike.
type csvMapping struct {
	file, indexDir string            // indexDir "" when no index is kept
	idx            *csvIndex         // the current index, once a lookup found one
	source         string            // how the last lookup was answered, for `willi lookup`
	state          string            // what Check found and did to the index, for `willi check`
	cache          map[string]string // per key its server, "" none, for later recipients
	buildTried     bool              // this process has tried to start a rebuild
}

func newCSVMapping(file, indexDir string) Mapping {
	return &csvMapping{file: file, indexDir: indexDir, cache: map[string]string{}}
}

func (m *csvMapping) String() string     { return "csv:" + m.file }
func (m *csvMapping) answeredBy() string { return m.source }
func (m *csvMapping) indexState() string { return m.state }

func (m *csvMapping) Close() error {
	if m.idx != nil {
		m.idx.db.Close()
		m.idx = nil
	}
	return nil
}

// Lookup answers from the session's cache, then the index, then a scan.
func (m *csvMapping) Lookup(ctx context.Context, keys []string) (string, string, error) {
	var need []string
	for _, k := range keys {
		if _, ok := m.cache[strings.ToLower(k)]; !ok {
			need = append(need, strings.ToLower(k))
		}
	}
	got, err := m.lookup(ctx, need)
	if err != nil {
		return "", "", err
	}
	for i, k := range need {
		m.cache[k] = got[i]
	}
	for _, k := range keys {
		if s := m.cache[strings.ToLower(k)]; s != "" {
			return k, s, nil
		}
	}
	return "", "", nil
}

// lookup returns each key's server, "" for none.
func (m *csvMapping) lookup(ctx context.Context, keys []string) ([]string, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	f, err := os.Open(m.file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rebuild := "" // why the index did not answer, when this process is to rebuild it
	if m.idx == nil && m.indexDir != "" && !m.buildTried {
		var why string
		if m.idx, why = openCSVIndex(m.file, m.indexDir, f); m.idx != nil {
			m.source = "from index"
		} else {
			rebuild = why
		}
	}
	if m.idx != nil {
		if out, err := m.idx.lookup(keys); err != errCSVIndexCorrupt {
			return out, err
		}
		m.Close()
		rebuild = "index corrupt"
	}
	out := make([]string, len(keys))
	err = readCSV(m.file, f, func(_ int, pattern, server string) error {
		for i, k := range keys {
			if out[i] == "" && k == pattern {
				out[i] = server
			}
		}
		return ctx.Err()
	})
	if rebuild != "" {
		// Once a session, and after its answer: this process rebuilds in
		// the background while the session goes on; others scan meanwhile.
		m.buildTried = true
		m.source = "by scan: " + rebuild + ", " + startCSVIndexBuild(m.file, m.indexDir)
	}
	return out, err
}

// csvError is a fault in the file, with the line it is on (0: the file as a whole).
type csvError struct {
	file string
	line int
	msg  string
}

func (e *csvError) Error() string {
	if e.line == 0 {
		return e.file + ": " + e.msg
	}
	return fmt.Sprintf("%s:%d: %s", e.file, e.line, e.msg)
}

// readCSV parses the whole file with encoding/csv and calls fn for each row
// with the line it starts on, the pattern trimmed and lower-cased, the
// server trimmed. The header (the first record) sets the delimiter: the one
// of ',' and ';' that makes it name both columns, read with each in turn.
func readCSV(file string, in io.ReadSeeker, fn func(line int, pattern, server string) error) error {
	var line int
	var firstErr error
	for _, delim := range []rune{',', ';'} {
		if _, err := in.Seek(0, io.SeekStart); err != nil {
			return err
		}
		br := bufio.NewReaderSize(&csvLineLimit{file: file, r: in, line: 1}, 64<<10)
		if b, _ := br.Peek(3); string(b) == "\uFEFF" {
			br.Discard(3)
		}
		cr := csv.NewReader(br)
		cr.Comma, cr.Comment, cr.ReuseRecord = delim, '#', true
		rec, err := cr.Read()
		var pe *csv.ParseError
		if err == io.EOF {
			return &csvError{file, 0, "no header line"}
		} else if errors.As(err, &pe) {
			line, firstErr = pe.StartLine, cmp.Or(firstErr, pe.Err)
			continue
		} else if err != nil {
			return err
		}
		line, _ = cr.FieldPos(0)
		col := map[string]int{}
		for i, name := range rec {
			name = strings.ToLower(strings.TrimSpace(name))
			if _, twice := col[name]; twice && (name == "pattern" || name == "server") {
				return &csvError{file, line, "header names the column " + name + " twice"}
			}
			col[name] = i
		}
		p, okP := col["pattern"]
		s, okS := col["server"]
		for okP && okS {
			if rec, err = cr.Read(); err == io.EOF {
				return nil
			} else if errors.As(err, &pe) {
				return &csvError{file, pe.Line, strings.ReplaceAll(pe.Err.Error(), "quoted-field", "quoted field")}
			} else if err != nil {
				return err
			}
			line, _ = cr.FieldPos(0)
			pattern, server := strings.ToLower(strings.TrimSpace(rec[p])), strings.TrimSpace(rec[s])
			switch {
			case pattern == "":
				return &csvError{file, line, "empty pattern"}
			case server == "":
				return &csvError{file, line, "empty server"}
			}
			if err := fn(line, pattern, server); err != nil {
				return err
			}
		}
	}
	msg := "header line must name the columns pattern and server, separated by , or ;"
	if firstErr != nil {
		msg += fmt.Sprintf(" (%v)", firstErr)
	}
	return &csvError{file, line, msg}
}

// csvLineLimit fails a line of csvMaxLine bytes or more: encoding/csv
// itself would hold any line whole in memory.
type csvLineLimit struct {
	file    string
	r       io.Reader
	n, line int // bytes of the current line so far, and its number
}

func (l *csvLineLimit) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	for rest := p[:n]; ; {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 || l.n+i >= csvMaxLine {
			l.n += len(rest)
			break
		}
		l.n, l.line, rest = 0, l.line+1, rest[i+1:]
	}
	if l.n >= csvMaxLine {
		return 0, &csvError{l.file, l.line, fmt.Sprintf("line longer than %d bytes", csvMaxLine)}
	}
	return n, err
}

// csvFirst is the first row of a pattern.
type csvFirst struct {
	line   int
	server string
}

// Check parses the whole file: every fault is an error with its line, a
// pattern given twice is a warning (the first line wins). With an index
// folder it then verifies the index against the parse, or rebuilds it.
func (m *csvMapping) Check(ctx context.Context) ([]string, error) {
	f, err := os.Open(m.file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var warnings []string
	var bad []error
	seen := map[string]csvFirst{}
	err = readCSV(m.file, f, func(line int, pattern, server string) error {
		if s, ok := seen[pattern]; ok {
			warnings = append(warnings, fmt.Sprintf("%s:%d: pattern %q repeats line %d, which wins", m.file, line, pattern, s.line))
		} else {
			seen[pattern] = csvFirst{line, server}
		}
		if _, err := parseServers(server); err != nil && len(bad) < 20 {
			bad = append(bad, &csvError{m.file, line, fmt.Sprintf("bad server %q: %v", server, err)})
		}
		return ctx.Err()
	})
	if err != nil {
		bad = append([]error{err}, bad...)
	}
	if m.indexDir != "" && ctx.Err() == nil {
		var ierr error
		if m.state, ierr = checkCSVIndex(m.file, m.indexDir, f, seen, err); ierr != nil {
			bad = append(bad, ierr)
		}
	}
	return warnings, errors.Join(bad...)
}
