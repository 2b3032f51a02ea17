package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// DATA (data.go): the end-of-data and line-discipline scanner, checked
// against a byte-wise reference written here, whole and split at every
// offset; and FuzzData, a round trip through the same loop as cmdData.

// refData is the reference: the message ends at the first CR LF "." CR LF
// of CR LF + in (the DATA command's own CRLF comes first); it is refused
// when over max, else at its first bare CR, bare LF or NUL.
type refResult struct {
	done bool  // the end of data is in the input
	n    int   // octets of the input that belong to the message, terminator included
	size int64 // message octets, ".\r\n" excluded
	err  error // nil, errTooBig, errBareCRLF or errNUL
}

func refData(in []byte, max int64) refResult {
	p := append([]byte("\r\n"), in...)
	i := bytes.Index(p, []byte("\r\n.\r\n"))
	res := refResult{n: len(in), size: int64(len(in))}
	content := in
	if i >= 0 {
		res = refResult{done: true, n: i + 3, size: int64(i)}
		content = in[:i]
	}
	if res.done && max > 0 && res.size > max {
		res.err = errTooBig
		return res
	}
	for j, c := range content {
		prev := byte('\n') // the DATA command's LF
		if j > 0 {
			prev = content[j-1]
		}
		// An octet that is both (NUL after CR) counts as a bare CR.
		switch {
		case prev == '\r' && c != '\n', c == '\n' && prev != '\r':
			res.err = errBareCRLF
		case c == 0:
			res.err = errNUL
		}
		if res.err != nil {
			return res
		}
	}
	// A CR at the very end of a complete message is impossible (the
	// message ends with CRLF); of an incomplete one it is still undecided.
	return res
}

// scanChunks feeds the chunks to a scanner as cmdData does and returns what
// it forwards (the chunks' message octets while no violation was seen) and
// how many octets it consumed.
func scanChunks(chunks [][]byte, max int64) (sc *dataScanner, fwd []byte, consumed int) {
	sc = newDataScanner(max)
	for _, c := range chunks {
		for len(c) > 0 && !sc.done() {
			n := sc.scan(c)
			if sc.err == nil {
				fwd = append(fwd, c[:n]...)
			}
			consumed += n
			c = c[n:]
		}
	}
	return sc, fwd, consumed
}

// scanReader runs cmdData's loop over a bufio.Reader on r and returns the
// octets left after the end of data.
func scanReader(r io.Reader, max int64) (sc *dataScanner, fwd, rest []byte, err error) {
	br := bufio.NewReaderSize(r, 16)
	sc = newDataScanner(max)
	for !sc.done() {
		if _, err = br.Peek(1); err != nil {
			break
		}
		chunk, _ := br.Peek(br.Buffered())
		n := sc.scan(chunk)
		if sc.err == nil {
			fwd = append(fwd, chunk[:n]...)
		}
		br.Discard(n)
	}
	rest, _ = io.ReadAll(br)
	return sc, fwd, rest, err
}

// checkScan compares a scanner's outcome on in, fed as chunks, with the
// reference, and checks what it forwarded against the invariants: a
// complete, clean message is forwarded exactly, terminator included; any
// other forwarded stream holds no end of data.
func checkScan(t *testing.T, name string, in []byte, chunks [][]byte, max int64) {
	t.Helper()
	want := refData(in, max)
	sc, fwd, n := scanChunks(chunks, max)
	if sc.done() != want.done || n != want.n {
		t.Fatalf("%s %.80q: done=%v consumed=%d, want done=%v consumed=%d", name, in, sc.done(), n, want.done, want.n)
	}
	if !want.done {
		if want.err != nil && sc.err == nil {
			t.Fatalf("%s %.80q: violation %v not seen", name, in, want.err)
		}
		if bytes.Contains(append([]byte("\r\n"), fwd...), []byte("\r\n.\r\n")) {
			t.Fatalf("%s %.80q: forwarded an end of data: %.80q", name, in, fwd)
		}
		return
	}
	if sc.size != want.size || sc.err != want.err {
		t.Fatalf("%s %.80q: size=%d err=%v, want size=%d err=%v", name, in, sc.size, sc.err, want.size, want.err)
	}
	if want.err == nil {
		if !bytes.Equal(fwd, in[:want.n]) {
			t.Fatalf("%s %.80q: forwarded %.80q, want %.80q", name, in, fwd, in[:want.n])
		}
	} else if bytes.Contains(append([]byte("\r\n"), fwd...), []byte("\r\n.\r\n")) {
		t.Fatalf("%s %.80q: refused message forwarded with an end of data: %.80q", name, in, fwd)
	}
}

// splits returns in whole, and cut at every offset, and at every pair of
// offsets when in is no longer than pairs.
func splits(in []byte, pairs int) [][][]byte {
	out := [][][]byte{{in}}
	for i := 0; i <= len(in); i++ {
		out = append(out, [][]byte{in[:i], in[i:]})
		if len(in) <= pairs {
			for j := i; j <= len(in); j++ {
				out = append(out, [][]byte{in[:i], in[i:j], in[j:]})
			}
		}
	}
	return out
}

var dataCases = []struct {
	name string
	in   string
	max  int64
	done bool
	n    int // consumed; -1 for all
	size int64
	err  error
}{
	{name: "empty message", in: ".\r\n", done: true, n: 3, size: 0},
	{name: "one line", in: "a\r\n.\r\n", done: true, n: 6, size: 3},
	{name: "empty line then end", in: "\r\n.\r\n", done: true, n: 5, size: 2},
	{name: "two lines", in: "Subject: x\r\n\r\nbody\r\n.\r\n", done: true, n: 23, size: 20},
	{name: "pipelined after end", in: "a\r\n.\r\nMAIL FROM:<x@y>\r\n", done: true, n: 6, size: 3},
	{name: "pipelined end twice", in: "a\r\n.\r\n.\r\n", done: true, n: 6, size: 3},
	{name: "stuffed dot line", in: "..\r\n.\r\n", done: true, n: 7, size: 4},
	{name: "stuffed text line", in: "a\r\n..b\r\n.\r\n", done: true, n: 11, size: 8},
	{name: "stuffed terminator look-alike", in: "a\r\n..\r\n.\r\n", done: true, n: 10, size: 7},
	{name: "dot mid-line", in: "a.\r\nb.\r\n.\r\n", done: true, n: 11, size: 8},
	{name: "dot space", in: ". \r\n.\r\n", done: true, n: 7, size: 4},
	{name: "8-bit", in: "\xff\xfe\x80\r\n.\r\n", done: true, n: 8, size: 5},
	{name: "tab and DEL", in: "\t\x7f\r\n.\r\n", done: true, n: 7, size: 4},

	// Look-alike ends: none of them ends the data.
	{name: "LF dot LF", in: "a\n.\n", n: -1, err: errBareCRLF},
	{name: "LF dot CRLF", in: "a\n.\r\n", n: -1, err: errBareCRLF},
	{name: "CRLF dot LF", in: "a\r\n.\nb", n: -1, err: errBareCRLF},
	{name: "CR dot CR", in: "a\r.\r", n: -1, err: errBareCRLF},
	{name: "CR dot CRLF", in: "a\r.\r\n", n: -1, err: errBareCRLF},
	{name: "CRLF dot CR", in: "a\r\n.\rb", n: -1, err: errBareCRLF},
	{name: "CRLF dot NUL CRLF", in: "a\r\n.\x00\r\n", n: -1, err: errNUL},
	{name: "CRLF NUL dot CRLF", in: "a\r\n\x00.\r\n", n: -1, err: errNUL},
	{name: "CRLF dot space CRLF", in: "a\r\n. \r\n", n: -1},
	{name: "CRLF dot dot CRLF", in: "a\r\n..\r\n", n: -1},
	{name: "CR CR LF dot CRLF", in: "a\r\r\n.\r\n", done: true, n: 7, size: 4, err: errBareCRLF},
	{name: "CRLF LF dot CRLF", in: "a\r\n\n.\r\n", n: -1, err: errBareCRLF},
	{name: "leading LF dot CRLF", in: "\n.\r\n", n: -1, err: errBareCRLF},
	{name: "leading dot LF", in: ".\n", n: -1, err: errBareCRLF},
	{name: "no end", in: "a\r\nb\r\n", n: -1},
	{name: "no end, trailing CR", in: "a\r", n: -1},
	{name: "no end, trailing dot", in: "a\r\n.", n: -1},
	{name: "no end, trailing dot CR", in: "a\r\n.\r", n: -1},

	// Violations: the end of data is still found, the message refused.
	{name: "bare LF", in: "a\nb\r\n.\r\n", done: true, n: 8, size: 5, err: errBareCRLF},
	{name: "bare CR", in: "a\rb\r\n.\r\n", done: true, n: 8, size: 5, err: errBareCRLF},
	{name: "leading bare LF", in: "\na\r\n.\r\n", done: true, n: 7, size: 4, err: errBareCRLF},
	{name: "NUL", in: "a\x00b\r\n.\r\n", done: true, n: 8, size: 5, err: errNUL},
	{name: "NUL at line start", in: "\x00\r\n.\r\n", done: true, n: 6, size: 3, err: errNUL},
	{name: "NUL before CRLF", in: "ab\x00\r\n.\r\n", done: true, n: 8, size: 5, err: errNUL},
	{name: "NUL then bare LF", in: "\x00\n\r\n.\r\n", done: true, n: 7, size: 4, err: errNUL},
	{name: "bare LF then NUL", in: "\n\x00\r\n.\r\n", done: true, n: 7, size: 4, err: errBareCRLF},
	{name: "smuggled LF dot LF", in: "a\n.\nMAIL FROM:<x@y>\r\n.\r\n", done: true, n: 24, size: 21, err: errBareCRLF},
	{name: "smuggled LF dot CRLF", in: "a\n.\r\nRCPT TO:<x@y>\r\n.\r\nQUIT\r\n", done: true, n: 23, size: 20, err: errBareCRLF},
	{name: "smuggled CR dot CR", in: "a\r.\rDATA\r\n.\r\n", done: true, n: 13, size: 10, err: errBareCRLF},

	// Size: exactly at the limit, one over, the terminator never counted.
	{name: "at limit", in: "12345678\r\n.\r\n", max: 10, done: true, n: 13, size: 10},
	{name: "one over", in: "123456789\r\n.\r\n", max: 10, done: true, n: 14, size: 11, err: errTooBig},
	{name: "far over", in: strings.Repeat("x", 100) + "\r\n.\r\n", max: 10, done: true, n: 105, size: 102, err: errTooBig},
	{name: "at limit with stuffed dot", in: "1234567\r\n..\r\n.\r\n", max: 13, done: true, n: 16, size: 13},
	{name: "over limit with stuffed dot", in: "1234567\r\n..\r\n.\r\n", max: 12, done: true, n: 16, size: 13, err: errTooBig},
	{name: "over limit and bare LF", in: "12345\n6789\r\n.\r\n", max: 10, done: true, n: 15, size: 12, err: errTooBig},
	{name: "at limit and bare LF", in: "1234\n5678\r\n.\r\n", max: 11, done: true, n: 14, size: 11, err: errBareCRLF},
	{name: "over limit and NUL", in: "\x00123456789\r\n.\r\n", max: 10, done: true, n: 15, size: 12, err: errTooBig},
	{name: "empty at limit zero", in: ".\r\n", max: 1, done: true, n: 3, size: 0},
}

func TestDataScanner(t *testing.T) {
	for _, tc := range dataCases {
		in := []byte(tc.in)
		want := refData(in, tc.max)
		n := tc.n
		if n < 0 {
			n = len(in)
		}
		if want.done != tc.done || want.n != n || want.done && (want.size != tc.size || want.err != tc.err) {
			t.Fatalf("%s: the reference says %+v", tc.name, want)
		}
		for _, chunks := range splits(in, 24) {
			checkScan(t, tc.name, in, chunks, tc.max)
		}
	}
}

// TestDataScannerCombinations runs every string of up to 6 octets over CR,
// LF, NUL, "." and a letter, alone and as the middle of a message, whole
// and split at every offset.
func TestDataScannerCombinations(t *testing.T) {
	alphabet := []byte{'\r', '\n', 0, '.', 'a'}
	var gen func(prefix []byte, left int)
	count := 0
	gen = func(prefix []byte, left int) {
		for _, in := range [][]byte{
			prefix,
			append(append([]byte("a\r\n"), prefix...), "\r\n.\r\n"...),
			append(append([]byte{}, prefix...), ".\r\n"...),
		} {
			for _, chunks := range splits(in, 9) {
				checkScan(t, "combination", in, chunks, 0)
				count++
			}
		}
		if left == 0 {
			return
		}
		for _, c := range alphabet {
			gen(append(append([]byte{}, prefix...), c), left-1)
		}
	}
	gen(nil, 6)
	if testing.Verbose() {
		t.Logf("%d scans", count)
	}
}

// TestDataScannerReaders runs cmdData's read loop over the iotest readers:
// one octet at a time, half of each read, and data with the final EOF.
func TestDataScannerReaders(t *testing.T) {
	readers := map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"one-byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
		"data-err": iotest.DataErrReader,
	}
	for _, tc := range dataCases {
		in := []byte(tc.in)
		want := refData(in, tc.max)
		for rname, wrap := range readers {
			sc, fwd, rest, err := scanReader(wrap(bytes.NewReader(in)), tc.max)
			if sc.done() != want.done {
				t.Fatalf("%s/%s: done=%v, want %v (err %v)", tc.name, rname, sc.done(), want.done, err)
			}
			if !want.done {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("%s/%s: read error %v, want EOF", tc.name, rname, err)
				}
				continue
			}
			if string(rest) != tc.in[want.n:] {
				t.Fatalf("%s/%s: left %q, want %q", tc.name, rname, rest, tc.in[want.n:])
			}
			if sc.err != want.err || sc.size != want.size {
				t.Fatalf("%s/%s: err=%v size=%d, want %v %d", tc.name, rname, sc.err, sc.size, want.err, want.size)
			}
			if want.err == nil && !bytes.Equal(fwd, in[:want.n]) {
				t.Fatalf("%s/%s: forwarded %q", tc.name, rname, fwd)
			}
		}
	}
}

// TestDataScannerLarge: a message far larger than any buffer, with lines
// of every length around the buffer sizes, through a one-octet reader and
// in chunks of each size up to 9.
func TestDataScannerLarge(t *testing.T) {
	msg := encodeMessage(testMessage(3000))
	for _, wrap := range []func(io.Reader) io.Reader{iotest.OneByteReader, iotest.HalfReader} {
		sc, fwd, rest, _ := scanReader(wrap(bytes.NewReader(append(msg, "QUIT\r\n"...))), 0)
		if !sc.done() || sc.err != nil || !bytes.Equal(fwd, msg) || string(rest) != "QUIT\r\n" {
			t.Fatalf("done=%v err=%v forwarded %d of %d, rest %q", sc.done(), sc.err, len(fwd), len(msg), rest)
		}
	}
	for size := 1; size <= 9; size++ {
		var chunks [][]byte
		for i := 0; i < len(msg); i += size {
			chunks = append(chunks, msg[i:min(i+size, len(msg))])
		}
		checkScan(t, fmt.Sprintf("chunks of %d", size), msg, chunks, 0)
		checkScan(t, fmt.Sprintf("chunks of %d, at the limit", size), msg, chunks, int64(len(msg)-3))
		checkScan(t, fmt.Sprintf("chunks of %d, over the limit", size), msg, chunks, int64(len(msg)-4))
	}
}

func testMessage(n int) []string {
	lines := make([]string, 0, n)
	for i := 0; i < n; i++ {
		l := strings.Repeat("x", i%40)
		switch i % 5 {
		case 1:
			l = "." + l
		case 2:
			l = ".."
		case 3:
			l = "."
		}
		lines = append(lines, l)
	}
	return lines
}

// encodeMessage is the reference writer: CRLF after each line, a dot
// before each line that starts with one, then the terminator.
func encodeMessage(lines []string) []byte {
	var b []byte
	for _, l := range lines {
		if strings.HasPrefix(l, ".") {
			b = append(b, '.')
		}
		b = append(b, l...)
		b = append(b, '\r', '\n')
	}
	return append(b, ".\r\n"...)
}

// decodeMessage is the reference reader of what the upstream received:
// lines up to the terminator, each unstuffed.
func decodeMessage(b []byte) ([]string, bool) {
	var lines []string
	for len(b) > 0 {
		i := bytes.Index(b, []byte("\r\n"))
		if i < 0 {
			return nil, false
		}
		l := string(b[:i])
		b = b[i+2:]
		if l == "." {
			return lines, len(b) == 0
		}
		lines = append(lines, strings.TrimPrefix(l, "."))
	}
	return nil, false
}

func TestDataRoundTrip(t *testing.T) {
	for _, lines := range [][]string{
		nil, {""}, {"."}, {".."}, {"...", ".", ""}, {"a", ".b", "", "c."}, testMessage(50),
	} {
		enc := encodeMessage(lines)
		for _, chunks := range splits(enc, 24) {
			sc, fwd, n := scanChunks(chunks, 0)
			if !sc.done() || sc.err != nil || n != len(enc) || !bytes.Equal(fwd, enc) {
				t.Fatalf("%.80q: done=%v err=%v consumed %d of %d", lines, sc.done(), sc.err, n, len(enc))
			}
			got, ok := decodeMessage(fwd)
			if !ok || strings.Join(got, "\n") != strings.Join(lines, "\n") || len(got) != len(lines) {
				t.Fatalf("%q: round trip gave %q", lines, got)
			}
		}
	}
}

// fuzzChunks cuts in into chunks whose sizes follow the octets of cuts.
func fuzzChunks(in, cuts []byte) [][]byte {
	var chunks [][]byte
	for i := 0; len(in) > 0; i++ {
		n := len(in)
		if len(cuts) > 0 {
			n = min(int(cuts[i%len(cuts)])%17+1, len(in))
		}
		chunks = append(chunks, in[:n])
		in = in[n:]
	}
	return chunks
}

// FuzzData: the input as raw client data, in chunks, against the reference;
// and the input's lines encoded by the reference writer, through the
// scanner, decoded again.
func FuzzData(f *testing.F) {
	for _, tc := range dataCases {
		f.Add([]byte(tc.in), []byte{1, 2, 3}, uint16(tc.max))
	}
	f.Add([]byte("a\r\n.\r\nMAIL FROM:<x@y>\r\nRCPT TO:<z@y>\r\nDATA\r\nb\r\n.\r\n"), []byte{0}, uint16(0))
	f.Add([]byte("x\n.\nQUIT\r\n\r\n.\r\n"), []byte{4, 0, 9}, uint16(0))
	f.Fuzz(func(t *testing.T, in, cuts []byte, max16 uint16) {
		max := int64(max16)
		checkScan(t, "fuzz", in, fuzzChunks(in, cuts), max)

		lines := strings.Split(strings.NewReplacer("\r", "", "\x00", "").Replace(string(in)), "\n")
		enc := encodeMessage(lines)
		sc, fwd, n := scanChunks(fuzzChunks(enc, cuts), 0)
		if !sc.done() || sc.err != nil || n != len(enc) || !bytes.Equal(fwd, enc) {
			t.Fatalf("%.80q: done=%v err=%v consumed %d of %d", enc, sc.done(), sc.err, n, len(enc))
		}
		got, ok := decodeMessage(fwd)
		if !ok || len(got) != len(lines) || strings.Join(got, "\n") != strings.Join(lines, "\n") {
			t.Fatalf("%q: round trip gave %q", lines, got)
		}
	})
}

// TestDataSession: the same through a whole session. The client gets the
// upstream's verdict only for a clean message; a bare CR, bare LF or NUL
// gets 550 5.5.2 and an oversized message 552 5.3.4 after the real end,
// the upstream connection is closed without an end of data, and the
// session goes on. Each body is sent whole and one octet per write.
func TestDataSession(t *testing.T) {
	const queued, bad, big = "250 2.0.0 Ok: queued as Q1\r\n", "550 5.5.2 ", "552 5.3.4 "
	tests := []struct {
		name, body, want string
		upstream         string // what the upstream received of the message
	}{
		{"clean", "hello\r\n.\r\n", queued, "hello\r\n.\r\n"},
		{"empty", ".\r\n", queued, ".\r\n"},
		{"stuffed", "..a\r\n...\r\n..\r\n.\r\n", queued, "..a\r\n...\r\n..\r\n.\r\n"},
		{"8-bit", "\xc3\xbc\xff\r\n.\r\n", queued, "\xc3\xbc\xff\r\n.\r\n"},
		{"at the limit", strings.Repeat("x", 998) + "\r\n.\r\n", queued, strings.Repeat("x", 998) + "\r\n.\r\n"},
		{"bare LF", "a\nb\r\n.\r\n", bad, ""},
		{"bare CR", "a\rb\r\n.\r\n", bad, ""},
		{"NUL", "a\x00b\r\n.\r\n", bad, ""},
		{"LF dot LF smuggling", "a\r\n\n.\nMAIL FROM:<x@evil.example>\r\nRCPT TO:<y@evil.example>\r\nDATA\r\nevil\r\n.\r\n", bad, ""},
		{"LF dot CRLF smuggling", "a\n.\r\nMAIL FROM:<x@evil.example>\r\n.\r\n", bad, ""},
		{"CR dot CR smuggling", "a\r.\rMAIL FROM:<x@evil.example>\r\n.\r\n", bad, ""},
		{"CRLF dot NUL smuggling", "a\r\n.\x00\r\nMAIL FROM:<x@evil.example>\r\n.\r\n", bad, ""},
		{"one over the limit", strings.Repeat("x", 999) + "\r\n.\r\n", big, ""},
		{"over the limit with smuggling", strings.Repeat("x", 1200) + "\n.\nMAIL FROM:<x@evil.example>\r\n.\r\n", big, ""},
	}
	for _, tc := range tests {
		for _, oneByte := range []bool{false, true} {
			fs := startFzSession(t, fzOptions{})
			fzToRcpt(fs)
			fs.expect("DATA", "354 ")
			if oneByte {
				for i := 0; i < len(tc.body); i++ {
					fs.send(tc.body[i : i+1])
				}
			} else {
				fs.send(tc.body)
			}
			if r := fs.reply(); !strings.HasPrefix(r, tc.want) {
				fs.fatalf("%s (one octet per write %v): got %q, want %s...", tc.name, oneByte, r, tc.want)
			}
			// The session goes on, and a new transaction reaches a new
			// upstream connection when the last one was aborted.
			fs.expect("NOOP", "250 2.0.0 Ok")
			fzToRcptAgain(fs)
			fs.expect("DATA", "354 ")
			fs.send("second\r\n.\r\n")
			fs.reply()
			out := fs.finish("QUIT\r\n")
			if out != "221 2.0.0 Bye\r\n" {
				fs.fatalf("%s: QUIT got %q", tc.name, out)
			}
			up := fs.up.received()
			_, first, _ := strings.Cut(up, "DATA\r\n")
			if tc.upstream != "" && !strings.HasPrefix(first, tc.upstream) {
				fs.fatalf("%s: upstream received %q, want %q", tc.name, first, tc.upstream)
			}
			if strings.Contains(up, "evil") {
				fs.fatalf("%s: smuggled content reached the upstream", tc.name)
			}
			if want := map[bool]int{true: 2, false: 1}[tc.want == queued]; fs.up.accepted() != want {
				fs.fatalf("%s: upstream accepted %d messages, want %d", tc.name, fs.up.accepted(), want)
			}
		}
	}
}

func fzToRcptAgain(fs *fzSession) {
	fs.expect("MAIL FROM:<a@example.net>", "250 ")
	fs.expect("RCPT TO:<b@example.org>", "250 ")
}
