package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// indexTestCSV has enough rows that the one the edits change is outside the
// first and last 4 KiB the identity hashes.
func indexTestCSV(server string) string {
	var b strings.Builder
	b.WriteString("pattern,server\n")
	for i := range 2000 {
		fmt.Fprintf(&b, "user%04d@example.org,mx%d.internal:25\n", i, i%10)
		if i == 1000 {
			fmt.Fprintf(&b, "target.org,%s\n", server)
		}
	}
	return b.String()
}

// TestCSVIndexEdits: every kind of edit to the CSV is seen by the next
// process (a fresh mapping), which answers by scan and rebuilds; the one
// after that answers from the new index.
func TestCSVIndexEdits(t *testing.T) {
	quickRacyWindow(t, 20*time.Millisecond)
	write := func(t *testing.T, p, content string) {
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name       string
		edit       func(t *testing.T, p string)
		wantServer string // "" no route
		wantErr    string
	}{
		{"same size, mtime put back", func(t *testing.T, p string) {
			fi, _ := os.Stat(p)
			write(t, p, indexTestCSV("mx2.internal:25"))
			if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
				t.Fatal(err)
			}
		}, "mx2.internal:25", ""},
		{"same size, same second", func(t *testing.T, p string) {
			write(t, p, indexTestCSV("mx2.internal:25"))
		}, "mx2.internal:25", ""},
		{"replaced by rename", func(t *testing.T, p string) {
			write(t, p+".new", indexTestCSV("other.internal:2525"))
			if err := os.Rename(p+".new", p); err != nil {
				t.Fatal(err)
			}
		}, "other.internal:2525", ""},
		{"truncated", func(t *testing.T, p string) {
			content := indexTestCSV("mx1.internal:25")
			if err := os.Truncate(p, int64(strings.Index(content, "target.org"))); err != nil {
				t.Fatal(err)
			}
		}, "", ""},
		{"appended to", func(t *testing.T, p string) {
			write(t, p, "pattern,server\nexample.net,x.internal\n"+strings.TrimPrefix(indexTestCSV("mx1.internal:25"), "pattern,server\n")+"target.org,late.internal\n")
		}, "mx1.internal:25", ""},
		{"made malformed", func(t *testing.T, p string) {
			write(t, p, indexTestCSV("mx1.internal:25")+"bad.org,mx,extra\n")
		}, "", ":2003: wrong number of fields"},
		{"removed", func(t *testing.T, p string) {
			os.Remove(p)
		}, "", "no such file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := writeCSV(t, indexTestCSV("mx1.internal:25"))
			dir := t.TempDir()
			keys := []string{"a@target.org", "target.org", ".org"}
			csvIndexedLookup(t, p, dir, keys...)
			if _, server, src, err := csvIndexedLookup(t, p, dir, keys...); server != "mx1.internal:25" || src != "from index" || err != nil {
				t.Fatalf("before the edit: %q %q %v", server, src, err)
			}
			tc.edit(t, p)
			for i, wantSrc := range []string{"by scan: index stale, rebuilding the index", "from index"} {
				_, server, src, err := csvIndexedLookup(t, p, dir, keys...)
				if tc.name == "removed" {
					wantSrc = "" // the file cannot be opened: no index is asked
				}
				errOK := (err == nil) == (tc.wantErr == "") && (err == nil || strings.Contains(err.Error(), tc.wantErr))
				if server != tc.wantServer || src != wantSrc || !errOK {
					t.Errorf("lookup %d after the edit: %q (%s) %v, want %q (%s) %q", i+1, server, src, err, tc.wantServer, wantSrc, tc.wantErr)
				}
			}
		})
	}
}

// TestCSVIndexDamaged: an index that is truncated, overwritten, garbage or
// of another version is not trusted: the lookup scans, and the index is
// rebuilt.
func TestCSVIndexDamaged(t *testing.T) {
	quickRacyWindow(t, 20*time.Millisecond)
	tests := []struct {
		name, why string
		damage    func(t *testing.T, idx string)
	}{
		{"truncated", "index corrupt", func(t *testing.T, idx string) {
			os.Truncate(idx, 64<<10) // bbolt's file is longer than its pages: cut into them
		}},
		{"empty", "index unreadable or corrupt", func(t *testing.T, idx string) { os.Truncate(idx, 0) }},
		{"garbage", "index unreadable or corrupt", func(t *testing.T, idx string) {
			os.WriteFile(idx, bytes.Repeat([]byte("garbage!"), 4096), 0o640)
		}},
		{"server overwritten", "index corrupt", func(t *testing.T, idx string) {
			b, _ := os.ReadFile(idx)
			i := bytes.Index(b, []byte("target.orgmx1.internal:25"))
			if i < 0 {
				t.Fatal("record not found in the index")
			}
			copy(b[i+len("target.orgmx"):], "7")
			os.WriteFile(idx, b, 0o640)
		}},
		{"pattern overwritten", "index corrupt", func(t *testing.T, idx string) {
			b, _ := os.ReadFile(idx)
			i := bytes.Index(b, []byte("target.orgmx1.internal:25"))
			copy(b[i:], "T")
			os.WriteFile(idx, b, 0o640)
		}},
		{"record deleted", "index corrupt", func(t *testing.T, idx string) {
			// A well-formed tree without the pattern: its absence must
			// not pass for a miss (the records beside it name each other).
			db, err := bolt.Open(idx, 0o640, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if err := db.Update(func(tx *bolt.Tx) error {
				return tx.Bucket([]byte("routes")).Delete(csvAppendKey(nil, "target.org"))
			}); err != nil {
				t.Fatal(err)
			}
		}},
		{"another version", "index from another version", func(t *testing.T, idx string) {
			b, _ := os.ReadFile(idx)
			i := bytes.Index(b, []byte(csvIndexVersion))
			copy(b[i:], "willi csv index 0\n")
			// The record's CRC must hold: only the version differs (the
			// record: version, the CSV's identity, the last key's CRC).
			v := b[i : i+len(csvIndexVersion)+44+4]
			binary.BigEndian.PutUint32(b[i+len(v):], csvSum([]byte("csv"), v))
			os.WriteFile(idx, b, 0o640)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := writeCSV(t, indexTestCSV("mx1.internal:25"))
			dir := t.TempDir()
			keys := []string{"a@target.org", "target.org", ".org"}
			csvIndexedLookup(t, p, dir, keys...)
			tc.damage(t, csvIndexPath(p, dir))
			for i, wantSrc := range []string{"by scan: " + tc.why + ", rebuilding the index", "from index"} {
				if _, server, src, err := csvIndexedLookup(t, p, dir, keys...); server != "mx1.internal:25" || src != wantSrc || err != nil {
					t.Errorf("lookup %d after the damage: %q (%s) %v, want (%s)", i+1, server, src, err, wantSrc)
				}
			}
		})
	}
}

// TestCSVIndexCommands: `willi check` builds, then verifies the index and
// says so; `willi lookup` says how it answered; without an index folder its
// lines are as before.
func TestCSVIndexCommands(t *testing.T) {
	quickRacyWindow(t, 20*time.Millisecond)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "routes.csv"), []byte(indexTestCSV("mx1.internal:25")), 0o644)
	base := "hostname = \"mx.test\"\n[[mapping]]\ntype = \"csv\"\nfile = \"routes.csv\"\n[[mapping]]\ntype = \"static\"\nserver = \"default.internal\"\n"
	writeConfig := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := writeConfig("indexed.conf", "index_dir = \"cache\"\n"+base)
	idx := csvIndexPath(filepath.Join(dir, "routes.csv"), filepath.Join(dir, "cache"))
	run := func(f func([]string, *bytes.Buffer) int, args ...string) (string, int) {
		var out bytes.Buffer
		code := f(args, &out)
		return out.String(), code
	}
	lookup := func(args []string, out *bytes.Buffer) int { return runLookup(args, out) }
	check := func(args []string, out *bytes.Buffer) int { return runCheck(args, out) }

	out, code := run(lookup, "-config", cfg, "a@target.org", "x@nowhere.net")
	want := "a@target.org -> mx1.internal:25 (mapping csv:" + dir + "/routes.csv, key target.org; csv:" + dir + "/routes.csv by scan: no index yet, rebuilding the index)\n" +
		"x@nowhere.net -> default.internal:25 (mapping static, key x@nowhere.net; csv:" + dir + "/routes.csv by scan: no index yet, rebuilding the index)\n"
	if out != want || code != 0 {
		t.Errorf("first lookup (%d):\n%s want\n%s", code, out, want)
	}
	out, _ = run(lookup, "-config", cfg, "a@target.org")
	if !strings.HasSuffix(out, "key target.org; csv:"+dir+"/routes.csv from index)\n") {
		t.Errorf("second lookup: %s", out)
	}
	out, code = run(check, "-config", cfg)
	if code != 0 || !strings.Contains(out, "(csv): index "+idx+": current, verified (2001 patterns)\n") {
		t.Errorf("check (%d): %s", code, out)
	}
	os.Remove(idx)
	out, code = run(check, "-config", cfg)
	if code != 0 || !strings.Contains(out, "(csv): index "+idx+": no index yet, rebuilt (2001 patterns in ") {
		t.Errorf("check without an index (%d): %s", code, out)
	}

	// The same mapping without an index folder: the lines are as before.
	t.Setenv("CACHE_DIRECTORY", "")
	plain := writeConfig("plain.conf", base)
	out, _ = run(lookup, "-config", plain, "a@target.org", "x@nowhere.net")
	want = "a@target.org -> mx1.internal:25 (mapping csv:" + dir + "/routes.csv, key target.org)\n" +
		"x@nowhere.net -> default.internal:25 (mapping static, key x@nowhere.net)\n"
	if out != want {
		t.Errorf("lookup without an index:\n%s want\n%s", out, want)
	}
	if out, _ = run(check, "-config", plain); strings.Contains(out, "index") {
		t.Errorf("check without an index: %s", out)
	}
}

// TestCSVIndexDirConfig: index_dir is relative to the config's folder,
// defaults to $CACHE_DIRECTORY (systemd's CacheDirectory=), and "" turns
// the index off.
func TestCSVIndexDirConfig(t *testing.T) {
	base := "[[mapping]]\ntype = \"csv\"\nfile = \"r.csv\"\n"
	tests := []struct{ env, key, want, err string }{
		{"", "", "", ""},
		{"/var/cache/willi", "", "/var/cache/willi", ""},
		{"/var/cache/willi:/var/cache/other", "", "/var/cache/willi", ""},
		{"/var/cache/willi", `index_dir = "idx"`, "/etc/willi/idx", ""},
		{"", `index_dir = "/srv/idx"`, "/srv/idx", ""},
		{"/var/cache/willi", `index_dir = ""`, "", ""},
		{"cache", "", "", "CACHE_DIRECTORY must be an absolute path"},
	}
	for _, tc := range tests {
		t.Setenv("CACHE_DIRECTORY", tc.env)
		c, err := parseConfig(tc.key+"\n"+base, "/etc/willi/willi.conf")
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q %q: error %v, want %q", tc.env, tc.key, err, tc.err)
			}
			continue
		}
		if err != nil || c.Mappings[0].indexDir != tc.want {
			t.Errorf("%q %q: index folder %q %v, want %q", tc.env, tc.key, c.Mappings[0].indexDir, err, tc.want)
		}
	}
}

// FuzzCSVIndex damages an index (bytes overwritten, or cut short): a lookup
// through it must never crash and must answer as the scan does, from the
// index when the damage missed what it reads, else by scanning.
func FuzzCSVIndex(f *testing.F) {
	f.Add(uint32(0), []byte{0xff}, uint32(0))
	f.Add(uint32(4096), []byte{0, 0, 0, 0}, uint32(0))
	f.Add(uint32(8192+100), []byte("x"), uint32(0))
	f.Add(uint32(0), []byte{}, uint32(12000))
	f.Add(uint32(3*4096+16), []byte{1, 2, 3}, uint32(0))
	quickRacyWindow(f, 0) // no file changes while it is indexed
	var b strings.Builder
	b.WriteString("pattern,server\n")
	for i := range 400 { // a tree of two levels: a branch page over leaves
		fmt.Fprintf(&b, "user%03d@example.org,mx%d.internal:25\n", i, i%10)
	}
	dir := f.TempDir()
	p := filepath.Join(dir, "routes.csv")
	os.WriteFile(p, []byte(b.String()), 0o644)
	time.Sleep(20 * time.Millisecond)
	if _, err := buildCSVIndex(p, dir); err != nil {
		f.Fatal(err)
	}
	good, err := os.ReadFile(csvIndexPath(p, dir))
	if err != nil {
		f.Fatal(err)
	}
	type answer struct{ key, server string }
	want := map[string]answer{}
	for _, addr := range []string{"user399@example.org", "user000@example.org", "user200@example.org", "user2000@example.org", "x@nowhere.net"} {
		key, server, err := csvLookup(f, p, lookupKeys(addr, "")...)
		if err != nil {
			f.Fatal(err)
		}
		want[addr] = answer{key, server}
	}
	// The rebuild lock is held, as by another process: no rebuild starts.
	idxDir := fastTempDir(f)
	lock, err := lockCSVIndex(p, idxDir, false)
	if err != nil {
		f.Fatal(err)
	}
	defer lock.Close()
	f.Fuzz(func(t *testing.T, off uint32, patch []byte, cut uint32) {
		b := bytes.Clone(good)
		if int(off) < len(b) {
			copy(b[off:], patch)
		}
		if cut > 0 && int(cut) < len(b) {
			b = b[:cut]
		}
		if err := os.WriteFile(csvIndexPath(p, idxDir), b, 0o640); err != nil {
			t.Fatal(err)
		}
		m := newCSVMapping(p, idxDir).(*csvMapping)
		defer m.Close()
		for addr, w := range want {
			key, server, err := m.Lookup(t.Context(), lookupKeys(addr, ""))
			if err != nil || key != w.key || server != w.server {
				t.Fatalf("%s: with the damaged index (%s) %q %q %v, want %q %q", addr, m.source, key, server, err, w.key, w.server)
			}
		}
	})
}
