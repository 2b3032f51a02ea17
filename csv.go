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
// an index folder it answers from a compiled index kept beside the file
// (csvindex.go); without one, or while the index is stale, it streams the
// whole file through the one parser, readCSV: a file malformed anywhere
// fails every lookup alike.
type csvMapping struct {
	file     string
	indexDir string               // "" when no index is kept
	idx      *csvIndex            // the current index, once the first lookup found one
	source   string               // how the last lookup was answered, for `willi lookup`
	cache    map[string]csvAnswer // per key, for later recipients of the session
	state    string               // the index's state after Check, for `willi check`

	buildTried bool // this process has tried to start a rebuild
}

type csvAnswer struct {
	server string
	found  bool
}

func newCSVMapping(file, indexDir string) Mapping {
	return &csvMapping{file: file, indexDir: indexDir, cache: map[string]csvAnswer{}}
}

func (m *csvMapping) String() string { return "csv:" + m.file }

// answeredBy says how the last lookup was answered ("from index", "by
// scan: why"); "" without an index folder.
func (m *csvMapping) answeredBy() string { return m.source }

// indexState is what Check found and did to the index, for `willi check`.
func (m *csvMapping) indexState() string { return m.state }

func (m *csvMapping) Close() error {
	if m.idx != nil {
		m.idx.close()
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
	if len(need) > 0 {
		got, err := m.lookup(ctx, need)
		if err != nil {
			return "", "", err
		}
		for i, k := range need {
			m.cache[k] = got[i]
		}
	}
	for _, k := range keys {
		if a := m.cache[strings.ToLower(k)]; a.found {
			return k, a.server, nil
		}
	}
	return "", "", nil
}

func (m *csvMapping) lookup(ctx context.Context, keys []string) ([]csvAnswer, error) {
	f, err := os.Open(m.file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if m.idx == nil && m.indexDir != "" {
		var why string
		if m.idx, why = openCSVIndex(m.file, m.indexDir, f); m.idx != nil {
			m.source = "from index"
		} else if !m.buildTried {
			// The first process to find the index stale rebuilds it after
			// this answer; the others scan until it is in place.
			m.buildTried = true
			m.source = "by scan: " + why + ", " + startCSVIndexBuild(m.file, m.indexDir)
		}
	}
	if m.idx != nil {
		if out, err := m.idx.lookup(keys); !errors.Is(err, errCSVIndexCorrupt) {
			return out, err
		}
		m.idx.close()
		m.idx, m.buildTried = nil, true
		m.source = "by scan: index corrupt, " + startCSVIndexBuild(m.file, m.indexDir)
	}
	out := make([]csvAnswer, len(keys))
	err = readCSV(m.file, f, func(_ int, pattern, server string) error {
		for i, k := range keys {
			if !out[i].found && k == pattern {
				out[i] = csvAnswer{server, true}
			}
		}
		return ctx.Err()
	})
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
// server trimmed. The header line (the first that is neither blank nor a
// comment) sets the delimiter: the one of ',' and ';' that makes it name
// both columns.
func readCSV(file string, in io.Reader, fn func(line int, pattern, server string) error) error {
	br := bufio.NewReaderSize(&csvLineLimit{file: file, r: in, line: 1}, 64<<10)
	if b, _ := br.Peek(3); bytes.Equal(b, []byte("\uFEFF")) {
		br.Discard(3)
	}
	var prefix []byte
	var h csvHeader
	for lineNo := 1; h.delim == 0; lineNo++ {
		raw, err := br.ReadBytes('\n')
		if err != nil && err != io.EOF {
			return err
		}
		prefix = append(prefix, raw...)
		line := bytes.TrimSuffix(bytes.TrimSuffix(raw, []byte("\n")), []byte("\r"))
		if len(line) > 0 && line[0] != '#' {
			if h, err = csvParseHeader(file, lineNo, line); err != nil {
				return err
			}
		} else if err == io.EOF {
			return &csvError{file, 0, "no header line"}
		}
	}
	// encoding/csv reads the lines up to the header again, to count lines.
	cr := csv.NewReader(io.MultiReader(bytes.NewReader(prefix), br))
	cr.Comma, cr.Comment, cr.ReuseRecord = h.delim, '#', true
	for header := true; ; header = false {
		rec, err := cr.Read()
		if err == io.EOF {
			return nil
		} else if err != nil {
			return csvParseError(file, err)
		} else if header {
			continue
		}
		line, _ := cr.FieldPos(0)
		pattern, server := strings.ToLower(strings.TrimSpace(rec[h.pattern])), strings.TrimSpace(rec[h.server])
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

// csvHeader is what the header line says: the delimiter and the columns.
type csvHeader struct {
	delim           rune
	pattern, server int
}

// csvParseHeader reads the header line with each delimiter in turn.
func csvParseHeader(file string, lineNo int, line []byte) (csvHeader, error) {
	msg := "header line must name the columns pattern and server, separated by , or ;"
	var firstErr error
	for _, d := range []rune{',', ';'} {
		r := csv.NewReader(bytes.NewReader(line))
		r.Comma = d
		rec, err := r.Read()
		if err != nil {
			firstErr = cmp.Or(firstErr, errors.Unwrap(err))
			continue
		}
		h := csvHeader{d, -1, -1}
		for i, name := range rec {
			col := map[string]*int{"pattern": &h.pattern, "server": &h.server}[strings.ToLower(strings.TrimSpace(name))]
			if col != nil && *col >= 0 {
				return h, &csvError{file, lineNo, "header names the column " + strings.ToLower(strings.TrimSpace(name)) + " twice"}
			} else if col != nil {
				*col = i
			}
		}
		if h.pattern >= 0 && h.server >= 0 {
			return h, nil
		}
	}
	if firstErr != nil {
		msg += fmt.Sprintf(" (%v)", firstErr)
	}
	return csvHeader{}, &csvError{file, lineNo, msg}
}

// csvParseError turns encoding/csv's error into a csvError with its line.
func csvParseError(file string, err error) error {
	var pe *csv.ParseError
	if !errors.As(err, &pe) {
		return err
	}
	msg := pe.Err.Error()
	switch {
	case errors.Is(pe.Err, csv.ErrBareQuote):
		msg = `bare " in a field that is not quoted`
	case errors.Is(pe.Err, csv.ErrQuote):
		msg = `extraneous or missing " in a quoted field`
	case errors.Is(pe.Err, csv.ErrFieldCount):
		msg = "wrong number of fields (the header has another number)"
	}
	return &csvError{file, pe.Line, msg}
}

// csvLineLimit fails a line of csvMaxLine bytes or more: encoding/csv
// itself would hold any line whole in memory.
type csvLineLimit struct {
	file string
	r    io.Reader
	n    int // bytes in the current line so far
	line int
}

func (l *csvLineLimit) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	for rest := p[:n]; ; {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			l.n += len(rest)
			break
		}
		if l.n+i >= csvMaxLine {
			l.n += i
			break
		}
		l.n, l.line, rest = 0, l.line+1, rest[i+1:]
	}
	if l.n >= csvMaxLine {
		return 0, &csvError{l.file, l.line, fmt.Sprintf("line longer than %d bytes", csvMaxLine)}
	}
	return n, err
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
	type first struct {
		line   int
		server string
	}
	seen := map[string]first{}
	err = readCSV(m.file, f, func(line int, pattern, server string) error {
		if s, ok := seen[pattern]; ok {
			warnings = append(warnings, fmt.Sprintf("%s:%d: pattern %q repeats line %d, which wins", m.file, line, pattern, s.line))
		} else {
			seen[pattern] = first{line, server}
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
		routes := make(map[string]string, len(seen))
		for p, s := range seen {
			routes[p] = s.server
		}
		var ierr error
		if m.state, ierr = checkCSVIndex(m.file, m.indexDir, routes, err); ierr != nil {
			bad = append(bad, ierr)
		}
	}
	return warnings, errors.Join(bad...)
}
