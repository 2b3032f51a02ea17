package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync"

	"github.com/gocarina/gocsv"
)

// Limits that keep a lookup's memory fixed whatever the file's size.
const (
	csvMaxLine   = 128 << 10 // a physical line, newline included
	csvMaxRecord = 1 << 20   // the fields of one record (quoted fields may span lines)
)

var csvBOM = []byte{0xEF, 0xBB, 0xBF}

// csvMapping routes by a CSV file with "pattern" and "server" columns.
//
// Each process routes a handful of recipients and exits, so parsing the
// whole file into a map per connection would cost far more than the lookup.
// Lookup instead streams the file once per batch of keys through a fixed
// buffer, splitting lines with SIMD-backed bytes.IndexByte and comparing
// only the pattern field against the few keys asked. The whole file is read
// every time so that a malformed file fails every lookup alike, wherever the
// fault is. Check does the full parse with gocsv (and warns on duplicates);
// FuzzCSV keeps the two in agreement.
type csvMapping struct {
	file  string
	f     *os.File // opened at the first Lookup; one snapshot per session
	size  int64
	bufs  [][]byte             // one fixed buffer per part scanned in parallel
	cache map[string]csvAnswer // per key, for later recipients of the session
}

type csvAnswer struct {
	server string
	found  bool
}

func newCSVMapping(file string) Mapping { return &csvMapping{file: file} }

func (m *csvMapping) String() string { return "csv:" + m.file }

func (m *csvMapping) Close() error {
	if m.f == nil {
		return nil
	}
	err := m.f.Close()
	m.f = nil
	return err
}

// Lookup answers from the cache when it can, else scans the file for the
// keys the cache does not know yet.
func (m *csvMapping) Lookup(ctx context.Context, keys []string) (string, string, error) {
	if m.cache == nil {
		m.cache = make(map[string]csvAnswer)
	}
	var need []string
	for _, k := range keys {
		k = strings.ToLower(k)
		a, ok := m.cache[k]
		if !ok {
			need = append(need, k)
			continue
		}
		if a.found {
			break // less specific keys cannot matter
		}
	}
	if len(need) > 0 {
		if m.f == nil {
			f, err := os.Open(m.file)
			if err != nil {
				return "", "", err
			}
			fi, err := f.Stat()
			if err != nil {
				f.Close()
				return "", "", err
			}
			m.f, m.size = f, fi.Size()
			m.bufs = make([][]byte, 1, csvMaxParts)
			m.bufs[0] = make([]byte, csvMaxLine)
			if m.size >= csvParallelMin {
				for len(m.bufs) < min(runtime.GOMAXPROCS(0), csvMaxParts) {
					m.bufs = append(m.bufs, make([]byte, csvMaxLine))
				}
			}
		}
		got, err := scanCSV(ctx, m.file, m.f, m.size, m.bufs, need)
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

// csvHeader is what the header line says about the layout.
type csvHeader struct {
	delim                 byte
	fields                int // every record has this many
	patternCol, serverCol int
}

// parseCSVHeader reads the header line (already newline-normalised): the
// delimiter is the one of ',' and ';' that makes it name both columns.
func parseCSVHeader(file string, lineNo int, line []byte) (csvHeader, error) {
	var firstErr error
	for _, d := range []byte{',', ';'} {
		r := csv.NewReader(bytes.NewReader(line))
		r.Comma = rune(d)
		rec, err := r.Read()
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		h := csvHeader{delim: d, fields: len(rec), patternCol: -1, serverCol: -1}
		for i, name := range rec {
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "pattern":
				if h.patternCol >= 0 {
					return h, &csvError{file, lineNo, "header names the column pattern twice"}
				}
				h.patternCol = i
			case "server":
				if h.serverCol >= 0 {
					return h, &csvError{file, lineNo, "header names the column server twice"}
				}
				h.serverCol = i
			}
		}
		if h.patternCol >= 0 && h.serverCol >= 0 {
			return h, nil
		}
	}
	msg := "header line must name the columns pattern and server, separated by , or ;"
	if firstErr != nil {
		var pe *csv.ParseError
		if errors.As(firstErr, &pe) {
			firstErr = pe.Err
		}
		msg += fmt.Sprintf(" (%v)", firstErr)
	}
	return csvHeader{}, &csvError{file, lineNo, msg}
}

// csvRowError checks the values of one row; both parsers apply it.
func csvRowError(file string, line int, pattern, server string) error {
	switch {
	case pattern == "":
		return &csvError{file, line, "empty pattern"}
	case server == "":
		return &csvError{file, line, "empty server"}
	}
	return nil
}

// csvParseError turns encoding/csv's error into a csvError with the line
// encoding/csv names (the scanner reproduces the same numbering).
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

// ---- the streaming scan (the hot path) ----

// csvScanner hands out physical lines from a fixed buffer, normalised as
// encoding/csv's readLine does ("\r\n" to "\n", a last "\r" dropped), and
// notes whether a line holds a quote (and so needs the full record parser).
type csvScanner struct {
	file    string
	r       io.ReaderAt
	off     int64 // file offset of buf[hi]
	buf     []byte
	lo, hi  int
	eof     bool
	line    int // number of the last line returned
	quoteAt int // index of the next '"' at or after lo, or hi
}

func newCSVScanner(file string, r io.ReaderAt, off int64, buf []byte) *csvScanner {
	return &csvScanner{file: file, r: r, off: off, buf: buf, quoteAt: -1}
}

// pos is the file offset of the next line.
func (s *csvScanner) pos() int64 { return s.off - int64(s.hi-s.lo) }

func (s *csvScanner) fill() error {
	if s.lo > 0 {
		copy(s.buf, s.buf[s.lo:s.hi])
		s.hi -= s.lo
		s.quoteAt -= s.lo
		s.lo = 0
	}
	n, err := s.r.ReadAt(s.buf[s.hi:], s.off)
	s.off += int64(n)
	s.hi += n
	if err == io.EOF {
		s.eof, err = true, nil
	}
	if s.quoteAt >= s.hi-n { // "none before hi" no longer covers the new bytes
		s.quoteAt = -1
	}
	s.marks()
	return err
}

// marks refreshes quoteAt once lo has passed it: one SIMD search per quote,
// not per line.
func (s *csvScanner) marks() {
	if s.quoteAt < s.lo {
		s.quoteAt = s.hi
		if i := bytes.IndexByte(s.buf[s.lo:s.hi], '"'); i >= 0 {
			s.quoteAt = s.lo + i
		}
	}
}

// next returns the next line (valid until the next call), whether it holds
// a quote, and ok=false at the end of the file.
func (s *csvScanner) next() (line []byte, quote, ok bool, err error) {
	for {
		i := bytes.IndexByte(s.buf[s.lo:s.hi], '\n')
		if i < 0 && s.hi-s.lo == len(s.buf) {
			return nil, false, false, &csvError{s.file, s.line + 1, fmt.Sprintf("line longer than %d bytes", csvMaxLine)}
		}
		if i >= 0 {
			end := s.lo + i + 1
			line = s.buf[s.lo:end]
			if n := len(line); n >= 2 && line[n-2] == '\r' {
				line[n-2] = '\n'
				line = line[:n-1]
			}
			quote = s.quoteAt < end
			s.lo = end
			s.marks()
			s.line++
			return line, quote, true, nil
		}
		if s.eof {
			if s.lo == s.hi {
				return nil, false, false, nil
			}
			line = s.buf[s.lo:s.hi]
			quote = s.quoteAt < s.hi
			s.lo = s.hi
			s.line++
			if line[len(line)-1] == '\r' {
				line = line[:len(line)-1]
			}
			return line, quote, true, nil
		}
		if err := s.fill(); err != nil {
			return nil, false, false, err
		}
	}
}

// csvNonASCII reports a byte >= 0x80, eight bytes at a time.
func csvNonASCII(b []byte) bool {
	var acc uint64
	i := 0
	for ; i+8 <= len(b); i += 8 {
		acc |= binary.LittleEndian.Uint64(b[i:])
	}
	for ; i < len(b); i++ {
		acc |= uint64(b[i])
	}
	return acc&0x8080808080808080 != 0
}

func csvLengthNL(b []byte) int {
	if len(b) > 0 && b[len(b)-1] == '\n' {
		return 1
	}
	return 0
}

// Files at least this big are scanned in parallel parts, one per CPU (at
// most csvMaxParts): a lookup is bound by memory bandwidth per core.
const (
	csvParallelMin = 2 << 20
	csvMaxParts    = 4
)

// scanCSV reads the file once and returns, for each key, the server of the
// first row whose pattern is that key. keys must be lower case. bufs holds
// one fixed buffer per part.
func scanCSV(ctx context.Context, file string, r io.ReaderAt, size int64, bufs [][]byte, keys []string) ([]csvAnswer, error) {
	s := newCSVScanner(file, r, 0, bufs[0])
	if err := s.fill(); err != nil {
		return nil, err
	}
	if bytes.HasPrefix(s.buf[:s.hi], csvBOM) {
		s.lo = len(csvBOM)
	}
	var h csvHeader
	for {
		line, _, ok, err := s.next()
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, &csvError{file, 0, "no header line"}
		}
		if len(line) > 0 && line[0] == '#' || len(line) == csvLengthNL(line) {
			continue
		}
		if h, err = parseCSVHeader(file, s.line, line); err != nil {
			return nil, err
		}
		break
	}

	// Split the rest at line starts. A part's scan stops at the first
	// record that starts at or past the next part's start; if that is not
	// exactly there (a quoted field ran over the split), the rest is
	// scanned again in sequence from where it stopped.
	parts := []*csvScanner{s}
	starts := []int64{s.pos()}
	if n := min(runtime.GOMAXPROCS(0), csvMaxParts, len(bufs)); n > 1 && size >= csvParallelMin {
		for i := 1; i < n; i++ {
			p := newCSVScanner(file, r, size*int64(i)/int64(n)-1, bufs[i])
			if _, _, ok, err := p.next(); err != nil || !ok || p.pos() <= starts[len(starts)-1] {
				break // the rest is one long line or tiny: keep it whole
			}
			p.line = 0
			parts = append(parts, p)
			starts = append(starts, p.pos())
		}
	}
	results := make([]csvPart, len(parts))
	var wg sync.WaitGroup
	for i := range parts {
		limit := int64(-1)
		if i+1 < len(parts) {
			limit = starts[i+1]
		}
		run := func() { results[i] = scanPart(ctx, parts[i], h, keys, limit) }
		if i == 0 {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); run() }()
	}
	lim0 := int64(-1)
	if len(parts) > 1 {
		lim0 = starts[1]
	}
	results[0] = scanPart(ctx, parts[0], h, keys, lim0)
	wg.Wait()

	out := results[0].out
	res := results[0]
	for i := 1; i < len(parts) && res.err == nil; i++ {
		base := res.lines
		if res.stop != starts[i] {
			p := newCSVScanner(file, r, res.stop, parts[i].buf)
			p.line = base
			res = scanPart(ctx, p, h, keys, -1)
			csvMergeAnswers(out, res.out)
			break
		}
		res = results[i]
		res.lines += base
		var ce *csvError
		if errors.As(res.err, &ce) {
			res.err = &csvError{ce.file, ce.line + base, ce.msg}
		}
		csvMergeAnswers(out, res.out)
	}
	if res.err != nil {
		return nil, res.err
	}
	return out, nil
}

// csvTrimSpace is bytes.TrimSpace without its cost when neither end can be
// white space, the usual case.
func csvTrimSpace(b []byte) []byte {
	if len(b) > 0 && ' ' < b[0] && b[0] < 0x80 && ' ' < b[len(b)-1] && b[len(b)-1] < 0x80 {
		return b
	}
	return bytes.TrimSpace(b)
}

// csvMergeAnswers adds later answers where earlier parts of the file had none.
func csvMergeAnswers(out, later []csvAnswer) {
	for i := range out {
		if !out[i].found && i < len(later) {
			out[i] = later[i]
		}
	}
}

// csvPart is what one part of the file yielded.
type csvPart struct {
	out   []csvAnswer
	stop  int64 // offset of the first record not scanned
	lines int   // lines consumed
	err   error
}

// scanPart scans records until the end of the file or, with limit >= 0,
// until the first record starting at or after limit.
func scanPart(ctx context.Context, s *csvScanner, h csvHeader, keys []string, limit int64) csvPart {
	out := make([]csvAnswer, len(keys))
	fail := func(err error) csvPart { return csvPart{err: err} }
	var rec csvRecord
	for n := 0; ; n++ {
		if n&255 == 0 && ctx.Err() != nil {
			return fail(ctx.Err())
		}
		if limit >= 0 && s.pos() >= limit {
			return csvPart{out: out, stop: s.pos(), lines: s.line}
		}
		if done, err := s.region(h, keys, out, limit); err != nil {
			return fail(err)
		} else if done > 0 {
			continue
		}
		line, quote, ok, err := s.next()
		if err != nil {
			return fail(err)
		}
		if !ok {
			return csvPart{out: out, stop: s.pos(), lines: s.line}
		}
		if len(line) > 0 && line[0] == '#' || len(line) == csvLengthNL(line) {
			continue
		}
		recLine := s.line
		var pat, srv []byte
		if !quote {
			pat, srv, err = csvSplitSimple(s, h, line)
		} else {
			pat, srv, err = rec.read(s, h, line)
		}
		if err == nil {
			err = csvMatch(s.file, recLine, pat, srv, keys, out)
		}
		if err != nil {
			return fail(err)
		}
	}
}

// csvMatch records the row for each key its pattern equals, unless an
// earlier row already answered that key.
func csvMatch(file string, line int, pat, srv []byte, keys []string, out []csvAnswer) error {
	pat = csvTrimSpace(pat)
	if len(pat) == 0 || len(csvTrimSpace(srv)) == 0 {
		return csvRowError(file, line, string(pat), string(csvTrimSpace(srv)))
	}
	if csvNonASCII(pat) {
		// Unicode lower-casing may change lengths: compare the slow way.
		lp := strings.ToLower(string(pat))
		for i, k := range keys {
			if !out[i].found && lp == k {
				out[i] = csvAnswer{string(csvTrimSpace(srv)), true}
			}
		}
		return nil
	}
	for i, k := range keys {
		if len(k) == len(pat) && !out[i].found && csvASCIILowerEqual(pat, k) {
			out[i] = csvAnswer{string(csvTrimSpace(srv)), true}
		}
	}
	return nil
}

// region handles the complete lines in the buffer that come before the
// next quote (and before limit) in one tight loop: the bulk of a file.
// Instead of checking per line that no field is left over, it counts the
// delimiters of the whole region once (a SIMD count) against what the
// lines need; only on a mismatch does it look for the faulty line.
func (s *csvScanner) region(h csvHeader, keys []string, out []csvAnswer, limit int64) (int, error) {
	if s.quoteAt < s.lo || s.lo == s.hi {
		return 0, nil // nothing buffered yet
	}
	end := min(s.quoteAt, s.hi)
	if limit >= 0 {
		// Only lines starting before limit (at buffer index l > lo).
		if l := int(limit - (s.off - int64(s.hi))); l < end {
			if i := bytes.IndexByte(s.buf[l-1:end], '\n'); i >= 0 {
				end = l + i
			}
		}
	}
	end = bytes.LastIndexByte(s.buf[s.lo:end], '\n') + 1
	if end == 0 {
		return 0, nil
	}
	end += s.lo
	region := s.buf[s.lo:end]
	lines, data, spare := 0, 0, 0
	for rest := region; len(rest) > 0; {
		nl := bytes.IndexByte(rest, '\n')
		line := rest[:nl]
		rest = rest[nl+1:]
		lines++
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		}
		if len(line) == 0 {
			continue
		}
		if line[0] == '#' {
			spare += bytes.Count(line, []byte{h.delim})
			continue
		}
		data++
		var pat, srv []byte
		for col := 0; ; col++ {
			if col == h.fields-1 {
				if col == h.patternCol {
					pat = line
				} else if col == h.serverCol {
					srv = line
				}
				break
			}
			i := bytes.IndexByte(line, h.delim)
			if i < 0 {
				return 0, csvParseError(s.file, &csv.ParseError{Line: s.line + lines, Err: csv.ErrFieldCount})
			}
			if col == h.patternCol {
				pat = line[:i]
			} else if col == h.serverCol {
				srv = line[:i]
			}
			line = line[i+1:]
		}
		if err := csvMatch(s.file, s.line+lines, pat, srv, keys, out); err != nil {
			return 0, err
		}
	}
	if bytes.Count(region, []byte{h.delim})-spare != data*(h.fields-1) {
		// Some line has a field too many: find it the slow way.
		for rest := region; len(rest) > 0; s.line++ {
			nl := bytes.IndexByte(rest, '\n')
			line := rest[:nl+1]
			rest = rest[nl+1:]
			if len(line) > 1 && line[0] != '#' && !(len(line) == 2 && line[0] == '\r') {
				s.line++
				if _, _, err := csvSplitSimple(s, h, line); err != nil {
					return 0, err
				}
				s.line--
			}
		}
		return 0, errors.New("internal error: delimiter count")
	}
	s.lo = end
	s.line += lines
	return lines, nil
}

// csvASCIILowerEqual reports whether the ASCII bytes b, lower-cased, equal k.
func csvASCIILowerEqual(b []byte, k string) bool {
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != k[i] {
			return false
		}
	}
	return true
}

// csvSplitSimple splits a line without quotes: the common case, no copying.
func csvSplitSimple(s *csvScanner, h csvHeader, line []byte) (pat, srv []byte, err error) {
	line = line[:len(line)-csvLengthNL(line)]
	col := 0
	for start := 0; ; col++ {
		i := bytes.IndexByte(line[start:], h.delim)
		end := len(line)
		if i >= 0 {
			end = start + i
		}
		switch col {
		case h.patternCol:
			pat = line[start:end]
		case h.serverCol:
			srv = line[start:end]
		}
		if i < 0 {
			break
		}
		start = end + 1
	}
	if col+1 != h.fields {
		return nil, nil, csvParseError(s.file, &csv.ParseError{Line: s.line, Err: csv.ErrFieldCount})
	}
	return pat, srv, nil
}

// csvRecord parses a record with quoted fields the way encoding/csv's
// readRecord does (same errors on the same lines), copying field bytes into
// a scratch buffer since a quoted field may run over several lines.
type csvRecord struct {
	buf  []byte
	ends []int
}

func (r *csvRecord) read(s *csvScanner, h csvHeader, line []byte) (pat, srv []byte, err error) {
	r.buf, r.ends = r.buf[:0], r.ends[:0]
	recLine := s.line
	posLine := s.line // encoding/csv's pos.line: the last line with any bytes
	quoteErr := func(line int, e error) error {
		return csvParseError(s.file, &csv.ParseError{Line: line, Err: e})
	}
fields:
	for {
		if len(line) == 0 || line[0] != '"' {
			i := bytes.IndexByte(line, h.delim)
			field := line
			if i >= 0 {
				field = field[:i]
			} else {
				field = field[:len(field)-csvLengthNL(field)]
			}
			if bytes.IndexByte(field, '"') >= 0 {
				return nil, nil, quoteErr(s.line, csv.ErrBareQuote)
			}
			r.buf = append(r.buf, field...)
			r.ends = append(r.ends, len(r.buf))
			if i < 0 {
				break fields
			}
			line = line[i+1:]
			continue
		}
		line = line[1:]
		for {
			if len(r.buf) > csvMaxRecord {
				return nil, nil, &csvError{s.file, recLine, fmt.Sprintf("record longer than %d bytes", csvMaxRecord)}
			}
			if i := bytes.IndexByte(line, '"'); i >= 0 {
				r.buf = append(r.buf, line[:i]...)
				line = line[i+1:]
				switch {
				case len(line) > 0 && line[0] == '"':
					r.buf = append(r.buf, '"')
					line = line[1:]
				case len(line) > 0 && line[0] == h.delim:
					line = line[1:]
					r.ends = append(r.ends, len(r.buf))
					continue fields
				case csvLengthNL(line) == len(line):
					r.ends = append(r.ends, len(r.buf))
					break fields
				default:
					return nil, nil, quoteErr(s.line, csv.ErrQuote)
				}
			} else if len(line) > 0 {
				r.buf = append(r.buf, line...)
				next, _, _, err := s.next()
				if err != nil {
					return nil, nil, err
				}
				if line = next; len(line) > 0 {
					posLine = s.line
				}
			} else {
				// End of file inside a quoted field.
				return nil, nil, quoteErr(posLine, csv.ErrQuote)
			}
		}
	}
	if len(r.ends) != h.fields {
		return nil, nil, csvParseError(s.file, &csv.ParseError{Line: recLine, Err: csv.ErrFieldCount})
	}
	start := 0
	for i, end := range r.ends {
		switch i {
		case h.patternCol:
			pat = r.buf[start:end]
		case h.serverCol:
			srv = r.buf[start:end]
		}
		start = end
	}
	return pat, srv, nil
}

// ---- the full parse (Check) ----

// csvRow is one record as gocsv decodes it.
type csvRow struct {
	Pattern string `csv:"pattern"`
	Server  string `csv:"server"`
}

// readCSV parses the whole file with gocsv and calls fn for each row with
// the line it starts on. Values are trimmed and patterns lower-cased.
func readCSV(file string, in io.Reader, fn func(line int, row csvRow) error) error {
	br := bufio.NewReaderSize(in, 64<<10)
	if b, _ := br.Peek(len(csvBOM)); bytes.Equal(b, csvBOM) {
		br.Discard(len(csvBOM))
	}
	// Find the header line to learn the delimiter; encoding/csv then reads
	// the same bytes again from the start.
	var prefix []byte
	var h csvHeader
	for lineNo := 1; ; lineNo++ {
		raw, err := br.ReadBytes('\n')
		if len(raw)-csvLengthNL(raw) >= csvMaxLine {
			return &csvError{file, lineNo, fmt.Sprintf("line longer than %d bytes", csvMaxLine)}
		}
		if err != nil && err != io.EOF {
			return err
		}
		if len(raw) == 0 && err == io.EOF {
			return &csvError{file, 0, "no header line"}
		}
		prefix = append(prefix, raw...)
		line := csvNormaliseLine(raw, err == io.EOF)
		if len(line) > 0 && line[0] == '#' || len(line) == csvLengthNL(line) {
			if err == io.EOF {
				return &csvError{file, 0, "no header line"}
			}
			continue
		}
		if h, err = parseCSVHeader(file, lineNo, line); err != nil {
			return err
		}
		break
	}
	cr := csv.NewReader(&csvLineLimitReader{file: file, r: io.MultiReader(bytes.NewReader(prefix), br), line: 1})
	cr.Comma = rune(h.delim)
	cr.Comment = '#'
	cr.ReuseRecord = true
	um, err := gocsv.NewUnmarshaller(cr, csvRow{})
	if err != nil {
		return csvParseError(file, err)
	}
	// The contract's column names are matched case-insensitively.
	if err := um.RenormalizeHeaders(func(names []string) []string {
		out := make([]string, len(names))
		for i, n := range names {
			out[i] = strings.ToLower(strings.TrimSpace(n))
		}
		return out
	}); err != nil {
		return err
	}
	for {
		v, err := um.Read()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return csvParseError(file, err)
		}
		line, _ := cr.FieldPos(0)
		row := v.(csvRow)
		row.Pattern = strings.ToLower(strings.TrimSpace(row.Pattern))
		row.Server = strings.TrimSpace(row.Server)
		if err := csvRowError(file, line, row.Pattern, row.Server); err != nil {
			return err
		}
		if err := fn(line, row); err != nil {
			return err
		}
	}
}

// csvNormaliseLine is encoding/csv's line normalisation, on a copy.
func csvNormaliseLine(raw []byte, eof bool) []byte {
	line := append([]byte(nil), raw...)
	if n := len(line); eof && n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if n := len(line); n >= 2 && line[n-2] == '\r' && line[n-1] == '\n' {
		line[n-2] = '\n'
		line = line[:n-1]
	}
	return line
}

// csvLineLimitReader enforces csvMaxLine for the full parse as the scanner's
// fixed buffer does for lookups.
type csvLineLimitReader struct {
	file string
	r    io.Reader
	n    int // bytes in the current line so far
	line int
}

func (l *csvLineLimitReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	for i := 0; i < n; {
		j := bytes.IndexByte(p[i:n], '\n')
		if j < 0 {
			l.n += n - i
			break
		}
		l.n += j
		if l.n >= csvMaxLine {
			break
		}
		l.n = 0
		l.line++
		i += j + 1
	}
	if l.n >= csvMaxLine {
		return n, &csvError{l.file, l.line, fmt.Sprintf("line longer than %d bytes", csvMaxLine)}
	}
	return n, err
}

// Check parses the whole file: every fault is an error with its line,
// and a pattern given twice is a warning (the first line wins).
func (m *csvMapping) Check(ctx context.Context) ([]string, error) {
	f, err := os.Open(m.file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var warnings []string
	var bad []error
	seen := make(map[string]int)
	err = readCSV(m.file, f, func(line int, row csvRow) error {
		if first, ok := seen[row.Pattern]; ok {
			warnings = append(warnings, fmt.Sprintf("%s:%d: pattern %q repeats line %d, which wins", m.file, line, row.Pattern, first))
		} else {
			seen[row.Pattern] = line
		}
		if _, err := parseServers(row.Server); err != nil && len(bad) < 20 {
			bad = append(bad, &csvError{m.file, line, fmt.Sprintf("bad server %q: %v", row.Server, err)})
		}
		return ctx.Err()
	})
	if err != nil {
		bad = append([]error{err}, bad...)
	}
	return warnings, errors.Join(bad...)
}
