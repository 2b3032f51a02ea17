package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeCSV(t testing.TB, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "routes.csv")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// csvLookup asks a fresh mapping without an index, as a new process would.
func csvLookup(t testing.TB, file string, keys ...string) (string, string, error) {
	t.Helper()
	m := newCSVMapping(file, "")
	defer m.Close()
	return m.Lookup(context.Background(), keys)
}

// csvIndexedLookup asks a fresh mapping with the index folder dir, as a new
// process would, waits for any rebuild it started, and says how it answered.
func csvIndexedLookup(t testing.TB, file, dir string, keys ...string) (key, server, source string, err error) {
	t.Helper()
	m := newCSVMapping(file, dir).(*csvMapping)
	defer m.Close()
	key, server, err = m.Lookup(context.Background(), keys)
	csvIndexBuilds.Wait()
	return key, server, m.source, err
}

// quickRacyWindow shortens the wait for a CSV written a moment ago (tests
// write their CSVs just before they index them) to d, longer than the file
// system's tick where a test edits a file after it was indexed.
func quickRacyWindow(t testing.TB, d time.Duration) {
	old := csvIndexRacy
	csvIndexRacy = d
	t.Cleanup(func() { csvIndexRacy = old })
}

// csvAllWays looks keys up by scan, then with an index folder twice: the
// first builds the index, the second must answer from it. All three must agree.
func csvAllWays(t *testing.T, file string, keys ...string) (string, string, error) {
	t.Helper()
	key, server, err := csvLookup(t, file, keys...)
	dir := t.TempDir()
	if _, _, src, _ := csvIndexedLookup(t, file, dir, keys...); src != "by scan: no index yet, rebuilding the index" {
		t.Errorf("first indexed lookup: %q", src)
	}
	ikey, iserver, src, ierr := csvIndexedLookup(t, file, dir, keys...)
	if src != "from index" || ikey != key || iserver != server || fmt.Sprint(ierr) != fmt.Sprint(err) {
		t.Errorf("index (%s): %q %q %v; scan: %q %q %v", src, ikey, iserver, ierr, key, server, err)
	}
	return key, server, err
}

func TestCSVFormats(t *testing.T) {
	tests := []struct {
		name, content string
	}{
		{"comma", "pattern,server\nexample.com,mx1:25\n"},
		{"semicolon", "pattern;server\nexample.com;mx1:25\n"},
		{"server first", "server,pattern\nmx1:25,example.com\n"},
		{"extra columns", "note,server,owner,pattern\nhi,mx1:25,bob,example.com\n"},
		{"header case and spaces", " Pattern ; SERVER \nexample.com;mx1:25\n"},
		{"BOM", "\uFEFFpattern,server\nexample.com,mx1:25\n"},
		{"CRLF", "pattern,server\r\nexample.com,mx1:25\r\n"},
		{"no final newline", "pattern,server\nexample.com,mx1:25"},
		{"CRLF no final newline", "pattern,server\r\nexample.com,mx1:25\r"},
		{"comments and blank lines", "# routes\n\npattern,server\n\n# a comment\nexample.com,mx1:25\n\n"},
		{"quoted", "\"pattern\",\"server\"\n\"example.com\",\"mx1:25\"\n"},
		{"quoted delimiter", "pattern;server;note\nexample.com;mx1:25;\"a;b\"\"c\"\"\nd\"\n"},
		{"spaces around values", "pattern , server\n  example.com , mx1:25  \n"},
		{"upper case pattern", "pattern,server\nEXAMPLE.Com,mx1:25\n"},
		{"first duplicate wins", "pattern,server\nexample.com,mx1:25\nexample.com,mx2:25\n"},
		{"comma in other field with semicolons", "pattern;server;note\nexample.com;mx1:25;a,b\n"},
	}
	quickRacyWindow(t, 20*time.Millisecond)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := writeCSV(t, tc.content)
			key, server, err := csvAllWays(t, p, "a@example.com", "example.com", ".com")
			if err != nil || key != "example.com" || server != "mx1:25" {
				t.Fatalf("scan: got %q %q %v", key, server, err)
			}
			if _, err := newCSVMapping(p, "").Check(context.Background()); err != nil {
				t.Fatalf("check: %v", err)
			}
		})
	}
}

func TestCSVMalformed(t *testing.T) {
	tests := []struct {
		name, content string
		line          int
		msg           string
	}{
		{"empty file", "", 0, "no header"},
		{"only comments", "# x\n\n", 0, "no header"},
		{"no server column", "pattern,target\nexample.com,mx\n", 1, "must name"},
		{"pattern twice", "pattern,server,pattern\na,b,c\n", 1, "twice"},
		{"too many fields", "pattern,server\na.com,mx\nb.com,mx,x\n", 3, "wrong number of fields"},
		{"too few fields", "# c\npattern,server\na.com,mx\n\nb.com\n", 5, "wrong number of fields"},
		{"bare quote", "pattern,server\na.com,m\"x\n", 2, "bare"},
		{"text after quote", "pattern,server\n\"a.com\"x,mx\n", 2, "quoted field"},
		{"unterminated quote", "pattern,server\na.com,mx\n\"b.com,mx\nc.com,mx\n", 4, "quoted field"},
		{"empty pattern", "pattern,server\na.com,mx\n ,mx\n", 3, "empty pattern"},
		{"empty server", "pattern,server\na.com,\n", 2, "empty server"},
		{"long line", "pattern,server\n" + strings.Repeat("x", csvMaxLine) + ",mx\n", 2, "longer than"},
	}
	quickRacyWindow(t, 20*time.Millisecond)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := writeCSV(t, tc.content)
			_, _, lerr := csvAllWays(t, p, "zzz.org")
			_, cerr := newCSVMapping(p, "").Check(context.Background())
			for which, err := range map[string]error{"lookup": lerr, "check": cerr} {
				var ce *csvError
				if !errors.As(err, &ce) {
					t.Fatalf("%s: want a csvError, got %v", which, err)
				}
				if ce.line != tc.line || !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), p) {
					t.Errorf("%s: got %q, want line %d and %q", which, err, tc.line, tc.msg)
				}
			}
		})
	}
}

func TestCSVMissingFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nope.csv")
	if _, _, err := csvLookup(t, p, "a.org"); err == nil {
		t.Fatal("missing file must be an error")
	}
	if _, err := newCSVMapping(p, "").Check(context.Background()); err == nil {
		t.Fatal("missing file must fail Check")
	}
}

func TestCSVCheckWarningsAndServers(t *testing.T) {
	p := writeCSV(t, "pattern,server\nexample.com,mx1\nfoo.org,mx2\nExample.COM,mx3\nbad.org,mx:99999\n")
	warnings, err := newCSVMapping(p, "").Check(context.Background())
	if len(warnings) != 1 || !strings.Contains(warnings[0], ":4:") || !strings.Contains(warnings[0], "line 2") {
		t.Errorf("warnings %q: want one naming lines 4 and 2", warnings)
	}
	if err == nil || !strings.Contains(err.Error(), ":5: bad server") {
		t.Errorf("check error %v: want the bad server on line 5", err)
	}
}

func TestCSVCaseAndOrder(t *testing.T) {
	quickRacyWindow(t, 20*time.Millisecond)
	p := writeCSV(t, "pattern,server\n.COM,tld:25\nExample.com,dom:25\nBob@Example.com,bob:25\n.sub.example.com,sub:25\n")
	dir := t.TempDir()
	if _, _, src, err := csvIndexedLookup(t, p, dir, "x"); err != nil || !strings.HasPrefix(src, "by scan") {
		t.Fatalf("building the index: %q %v", src, err)
	}
	tests := []struct{ addr, key, server string }{
		{"bob@example.com", "bob@example.com", "bob:25"},
		{"BOB+x@EXAMPLE.COM", "bob@example.com", "bob:25"},
		{"alice@example.com", "example.com", "dom:25"},
		{"a@deep.sub.example.com", ".sub.example.com", "sub:25"},
		{"a@other.com", ".com", "tld:25"},
		{"a@other.org", "", ""},
	}
	for _, indexDir := range []string{"", dir} {
		m := newCSVMapping(p, indexDir)
		defer m.Close()
		for _, tc := range tests {
			// The same mapping serves several recipients: the cache must agree.
			for range 2 {
				key, server, err := m.Lookup(context.Background(), lookupKeys(tc.addr, "+"))
				if err != nil || key != tc.key || server != tc.server {
					t.Errorf("index %q: %s: got %q %q %v, want %q %q", indexDir, tc.addr, key, server, err, tc.key, tc.server)
				}
			}
		}
		if src := m.(*csvMapping).source; indexDir != "" && src != "from index" {
			t.Errorf("answered %q", src)
		}
	}
}

// TestCSVMillionRows routes against a generated 1 000 000-row file by scan
// and from its index, hits and a miss alike. (Timings: bench/csv.sh.)
func TestCSVMillionRows(t *testing.T) {
	if testing.Short() {
		t.Skip("generates a 50 MB file")
	}
	p := genRoutes(t, 1_000_000)
	dir := t.TempDir()
	if n, err := buildCSVIndex(p, dir); err != nil || n != 1_000_000 {
		t.Fatalf("build: %d patterns, %v", n, err)
	}
	for _, addr := range []string{"user999999@d99999.example", "nobody@nowhere.example", "user0@d0.example", "x@d5.example"} {
		key, server, err := csvLookup(t, p, lookupKeys(addr, "")...)
		ikey, iserver, src, ierr := csvIndexedLookup(t, p, dir, lookupKeys(addr, "")...)
		if err != nil || ierr != nil || src != "from index" || key != ikey || server != iserver {
			t.Fatalf("%s: scan %q %q %v, index (%s) %q %q %v", addr, key, server, err, src, ikey, iserver, ierr)
		}
		if want := !strings.HasPrefix(addr, "nobody"); (key != "") != want || want && !strings.HasPrefix(server, "mx") {
			t.Errorf("%s: got %q %q", addr, key, server)
		}
	}
}

// genRoutes writes n rows: one address route per row and, every tenth row,
// a domain route.
func genRoutes(t testing.TB, n int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "routes.csv")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	fmt.Fprintln(w, "pattern,server")
	for i := 0; i < n; i++ {
		if i%10 == 0 {
			fmt.Fprintf(w, "d%d.example,mx%d.internal:25\n", i/10, i%7)
		} else {
			fmt.Fprintf(w, "user%d@d%d.example,mx%d.internal:2525 backup.internal\n", i, i/10, i%7)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// fastTempDir is a temporary folder in memory where there is one: a
// rebuild's fsync calls cost a fuzz target most of its time on a disk.
func fastTempDir(t testing.TB) string {
	dir, err := os.MkdirTemp("/dev/shm", "willi-fuzz-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// FuzzCSV fuzzes the parser: it never panics, a fault names a line of the
// file, and a lookup answers alike by scan and from the index built from the
// same bytes (the index is written from readCSV's rows, the scan reads them
// afresh; a fault must be the same fault either way).
func FuzzCSV(f *testing.F) {
	for _, s := range []string{
		"pattern,server\na.org,mx\n",
		"\uFEFFpattern;server\r\n\"A.org\";\"mx 1\"\r\n",
		"# c\n\nserver,x,pattern\nmx,\"q\"\"\n\",a.org\n",
		"pattern,server\n\"a.org\nb\",mx\na.org,\n",
		"pattern,server\nİ.org,mx\nK.org,my\n",
		"pattern;\"server\"\na.org;mx\n",
	} {
		f.Add(s, "a.org")
	}
	quickRacyWindow(f, 0) // no file changes while it is indexed
	f.Fuzz(func(t *testing.T, content, key string) {
		p := writeCSV(t, content)
		keys := []string{strings.ToLower(key), "a.org", ".org"}
		lines := strings.Count(content, "\n") + 1
		err := readCSV(p, strings.NewReader(content), func(line int, pattern, server string) error {
			if line < 1 || line > lines || pattern != strings.ToLower(strings.TrimSpace(pattern)) || server == "" {
				t.Fatalf("row on line %d of %d: %q %q", line, lines, pattern, server)
			}
			return nil
		})
		var ce *csvError
		if err != nil && (!errors.As(err, &ce) || ce.line < 0 || ce.line > lines) {
			t.Fatalf("fault %v: want a csvError on one of %d lines", err, lines)
		}
		dir := fastTempDir(t)
		if _, err := buildCSVIndex(p, dir); err != nil {
			t.Fatal(err)
		}
		gotKey, gotServer, scanErr := csvLookup(t, p, keys...)
		iKey, iServer, src, iErr := csvIndexedLookup(t, p, dir, keys...)
		if src != "from index" || gotKey != iKey || gotServer != iServer || fmt.Sprint(scanErr) != fmt.Sprint(iErr) {
			t.Fatalf("scan %q %q %v, index (%s) %q %q %v", gotKey, gotServer, scanErr, src, iKey, iServer, iErr)
		}
	})
}
