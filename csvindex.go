package main

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The compiled index of a CSV mapping: a bbolt file in the index folder,
// opened read-only (an mmap, a few system calls) by every process. Bucket
// "meta" holds one record: the format version, the identity of the CSV it
// was built from and, for a malformed CSV, its fault. Bucket "routes" maps
// each pattern (after a 2-byte hash prefix that spreads the patterns over
// the build's passes) to its first row's server, then the CRC-32C of the
// key before it in the index (0 for the first; meta holds the last key's),
// then a CRC-32C of all that. A hit is proven by its record's CRC; a miss
// by two whole records that sort around the key and name each other as
// neighbours. So a damaged index, its tree included, is noticed, never
// trusted (an answer from it is one the CSV gives).
const csvIndexVersion = "willi csv index 2\n"

// csvIndexPassBytes bounds the CSV bytes one build pass holds in memory, and
// csvIndexMemory the heap the build lets the garbage collector leave: the
// session's unit allows the process 256 MiB (MemoryMax=).
const (
	csvIndexPassBytes = 32 << 20
	csvIndexMemory    = 128 << 20
)

// csvIndexRacy: a CSV changed this recently may change again without a new
// timestamp (file systems keep times in ticks of up to a second).
var csvIndexRacy = time.Second

var (
	errCSVIndexCorrupt = errors.New("csv index corrupt")
	csvCRC             = crc32.MakeTable(crc32.Castagnoli)
	// csvIndexBuilds are the rebuilds this process runs: it waits for them
	// before it exits, after its session has ended.
	csvIndexBuilds sync.WaitGroup
	csvIndexLog    = sync.OnceValue(newLogger)
	csvIndexWarned sync.Once
)

// setCSVIndexLog makes index warnings lines of the session's log.
func setCSVIndexLog(l *slog.Logger) { csvIndexLog = func() *slog.Logger { return l } }

func csvIndexPath(file, dir string) string {
	sum := sha256.Sum256([]byte(file))
	return filepath.Join(dir, filepath.Base(file)+"."+hex.EncodeToString(sum[:6])+".idx")
}

// csvIdentity is what the index records of its CSV: device, inode, size,
// modification and change times in nanoseconds, and a CRC of the first and
// last 4 KiB, cheap enough to compare on every lookup.
func csvIdentity(f *os.File) (id []byte, ctime time.Time, err error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, ctime, err
	}
	st := fi.Sys().(*syscall.Stat_t)
	ctime = time.Unix(st.Ctim.Unix())
	for _, v := range []int64{int64(st.Dev), int64(st.Ino), st.Size, st.Mtim.Nano(), st.Ctim.Nano()} {
		id = binary.BigEndian.AppendUint64(id, uint64(v))
	}
	buf := make([]byte, 8<<10)
	n1, err1 := f.ReadAt(buf[:4<<10], 0)
	n2, err2 := f.ReadAt(buf[4<<10:], max(0, st.Size-4<<10))
	if err := readErr(err1, err2); err != nil {
		return nil, ctime, err
	}
	return binary.BigEndian.AppendUint32(id, crc32.Checksum(append(buf[:n1], buf[4<<10:4<<10+n2]...), csvCRC)), ctime, nil
}

// readErr is the first error that is not the end of the file.
func readErr(errs ...error) error {
	for _, err := range errs {
		if err != nil && err != io.EOF {
			return err
		}
	}
	return nil
}

// csvSum is the CRC a stored value ends with, proof that the record is whole.
func csvSum(key, value []byte) uint32 {
	return crc32.Update(crc32.Checksum(key, csvCRC), csvCRC, value)
}

func csvUnseal(key, v []byte) ([]byte, bool) {
	if len(v) < 4 {
		return nil, false
	}
	return v[:len(v)-4], csvSum(key, v[:len(v)-4]) == binary.BigEndian.Uint32(v[len(v)-4:])
}

// csvAppendKey appends pattern's key in the index: a 2-byte hash, then the pattern.
func csvAppendKey(b []byte, pattern string) []byte {
	b = append(append(b, 0, 0), pattern...)
	h := crc32.Checksum(b[len(b)-len(pattern):], csvCRC)
	binary.BigEndian.PutUint16(b[len(b)-len(pattern)-2:], uint16(h>>16))
	return b
}

// csvIndex is an index found current for the CSV a lookup opened.
type csvIndex struct {
	db     *bolt.DB
	tx     *bolt.Tx
	routes *bolt.Bucket
	last   uint32 // the CRC of the last key
	err    error  // the CSV's fault, for a malformed CSV
}

func (x *csvIndex) close() {
	if x.tx != nil {
		x.tx.Rollback()
	}
	x.db.Close()
}

// openCSVIndex returns the index when it is current for f, else nil and why.
func openCSVIndex(file, dir string, f *os.File) (x *csvIndex, why string) {
	id, _, err := csvIdentity(f)
	if err != nil {
		return nil, "index not checked: " + err.Error()
	}
	var idxFile *os.File
	db, err := bolt.Open(csvIndexPath(file, dir), 0, &bolt.Options{ReadOnly: true, Timeout: time.Millisecond,
		OpenFile: func(p string, fl int, m os.FileMode) (*os.File, error) {
			idxFile, err = os.OpenFile(p, fl, m)
			return idxFile, err
		}})
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil, "no index yet"
	} else if err != nil {
		return nil, "index unreadable or corrupt"
	}
	x = &csvIndex{db: db}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if recover() != nil || why != "" {
			x.close()
			x, why = nil, cmp.Or(why, "index corrupt")
		}
	}()
	x.tx, _ = db.Begin(false)
	fi, err := idxFile.Stat()
	meta := x.tx.Bucket([]byte("meta"))
	if err != nil || fi.Size() < x.tx.Size() || meta == nil {
		return x, "index corrupt" // truncated, or not ours
	}
	v, ok := csvUnseal([]byte("csv"), meta.Get([]byte("csv")))
	switch {
	case !ok:
		return x, "index corrupt"
	case !bytes.HasPrefix(v, []byte(csvIndexVersion)):
		return x, "index from another version"
	case !bytes.HasPrefix(v[len(csvIndexVersion):], id) || len(v) < len(csvIndexVersion)+len(id)+4:
		return x, "index stale"
	}
	v = v[len(csvIndexVersion)+len(id):]
	if x.last, v = binary.BigEndian.Uint32(v), v[4:]; len(v) > 0 {
		line, n := binary.Uvarint(v)
		x.err = &csvError{file, int(line), string(v[n:])}
	} else if x.routes = x.tx.Bucket([]byte("routes")); x.routes == nil {
		return x, "index corrupt"
	}
	return x, ""
}

// lookup answers keys from the index, or errCSVIndexCorrupt when a record
// it reads, or the order of its neighbours, shows damage.
func (x *csvIndex) lookup(keys []string) (out []csvAnswer, err error) {
	if x.err != nil {
		return nil, x.err
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if recover() != nil {
			out, err = nil, errCSVIndexCorrupt
		}
	}()
	out = make([]csvAnswer, len(keys))
	for i, k := range keys {
		key := csvAppendKey(nil, k)
		c := x.routes.Cursor()
		nk, nv := c.Seek(key)
		next, nextPrev, ok := csvRecord(nk, nv)
		if !ok || nk != nil && bytes.Compare(nk, key) < 0 {
			return nil, errCSVIndexCorrupt
		}
		if nk != nil && bytes.Equal(nk, key) {
			out[i] = csvAnswer{string(next), true}
			continue
		}
		// A miss: the records around the key must be neighbours.
		pk, pv := c.Prev()
		if nk == nil {
			pk, pv = c.Last()
		}
		_, _, ok = csvRecord(pk, pv)
		if !ok || pk != nil && bytes.Compare(pk, key) >= 0 {
			return nil, errCSVIndexCorrupt
		}
		if nk == nil && csvKeySum(pk) != x.last || nk != nil && csvKeySum(pk) != nextPrev {
			return nil, errCSVIndexCorrupt
		}
	}
	return out, nil
}

// csvRecord unseals a record: the server and the CRC of the key before
// it; ok is false for a damaged one. No record (k nil) is whole.
func csvRecord(k, v []byte) (server []byte, prev uint32, ok bool) {
	if k == nil {
		return nil, 0, true
	}
	u, ok := csvUnseal(k, v)
	if !ok || len(u) < 4 {
		return nil, 0, false
	}
	return u[:len(u)-4], binary.BigEndian.Uint32(u[len(u)-4:]), true
}

// csvKeySum is the CRC by which a record names the key before it; 0 for
// none.
func csvKeySum(k []byte) uint32 {
	if k == nil {
		return 0
	}
	return crc32.Checksum(k, csvCRC) | 1
}

// lockCSVIndex takes the rebuild lock of file's index, waiting for it or not.
func lockCSVIndex(file, dir string, wait bool) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	l, err := os.OpenFile(csvIndexPath(file, dir)+".lock", os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, err
	}
	how := syscall.LOCK_EX
	if !wait {
		how |= syscall.LOCK_NB
	}
	if err := syscall.Flock(int(l.Fd()), how); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// startCSVIndexBuild rebuilds the index in the background of this process
// when no other process is at it, and says which.
func startCSVIndexBuild(file, dir string) string {
	lock, err := lockCSVIndex(file, dir, false)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return "another process is rebuilding the index"
	} else if err != nil {
		csvIndexWarned.Do(func() {
			csvIndexLog().Warn("csv index folder not usable, csv mappings are scanned", "dir", dir, "err", err)
		})
		return "index folder not usable"
	}
	csvIndexBuilds.Add(1)
	go func() {
		defer csvIndexBuilds.Done()
		defer lock.Close()
		if n, err := buildCSVIndex(file, dir); err != nil {
			csvIndexLog().Warn("csv index rebuild failed", "file", file, "err", err)
		} else {
			csvIndexLog().Debug("csv index rebuilt", "file", file, "patterns", n)
		}
	}()
	return "rebuilding the index"
}

// buildCSVIndex writes the index into a temporary file, syncs it and renames
// it into place; the caller holds the lock. Patterns are sorted per pass and
// appended, so that memory stays bounded by csvIndexPassBytes.
func buildCSVIndex(file, dir string) (int, error) {
	f, err := os.Open(file)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	start := time.Now()
	id, ctime, err := csvIdentity(f)
	if err != nil {
		return 0, err
	}
	path := csvIndexPath(file, dir)
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	os.Remove(path + ".tmp") // left by a process that died building
	db, err := bolt.Open(path+".tmp", 0o640, &bolt.Options{NoSync: true, NoFreelistSync: true, InitialMmapSize: 4 * int(fi.Size())})
	if err != nil {
		return 0, err
	}
	defer os.Remove(path + ".tmp")
	defer db.Close()
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(csvIndexMemory))
	passes := 1 + int(fi.Size()/csvIndexPassBytes)
	type ent struct{ off, klen, vlen int } // a row in the arena: key, server
	var fault, prev []byte                 // prev: the last key put, across passes
	sum, rows, patterns := crc32.New(csvCRC), 0, 0
	for pass := 0; pass < passes && fault == nil; pass++ {
		var r io.Reader = io.NewSectionReader(f, 0, 1<<62)
		if pass == 0 {
			r = io.TeeReader(r, sum)
		}
		arena, ents := make([]byte, 0, fi.Size()/int64(passes)*5/4), []ent(nil)
		err := readCSV(file, r, func(_ int, pattern, server string) error {
			if rows++; rows%4096 == 0 {
				runtime.Gosched() // a session in this process goes first
			}
			off := len(arena)
			if arena = csvAppendKey(arena, pattern); int(arena[off])*passes>>8 != pass {
				arena = arena[:off]
				return nil
			}
			ents = append(ents, ent{off, len(arena) - off, len(server)})
			arena = append(arena, server...)
			return nil
		})
		if ce := (*csvError)(nil); errors.As(err, &ce) {
			fault = append(binary.AppendUvarint(nil, uint64(ce.line)), ce.msg...)
		} else if err != nil {
			return 0, err
		}
		if pass == 0 {
			io.Copy(io.Discard, r)
		}
		key := func(e ent) []byte { return arena[e.off : e.off+e.klen] }
		slices.SortFunc(ents, func(a, b ent) int { return cmp.Or(bytes.Compare(key(a), key(b)), a.off-b.off) })
		for i := 0; i < len(ents) && fault == nil; {
			err := db.Update(func(tx *bolt.Tx) error {
				b, err := tx.CreateBucketIfNotExists([]byte("routes"))
				for n := 0; b != nil && err == nil && i < len(ents) && n < 1<<16; i, n = i+1, n+1 {
					b.FillPercent = 1 // appended in order: full pages
					if k := key(ents[i]); i == 0 || !bytes.Equal(k, key(ents[i-1])) {
						v := append(slices.Clip(arena[ents[i].off+ents[i].klen:][:ents[i].vlen]), 0, 0, 0, 0)
						binary.BigEndian.PutUint32(v[len(v)-4:], csvKeySum(prev))
						err = b.Put(k, binary.BigEndian.AppendUint32(v, csvSum(k, v)))
						prev = append(prev[:0], k...)
						patterns++
					}
				}
				return err
			})
			if err != nil {
				return 0, err
			}
		}
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists([]byte("meta"))
		if err == nil {
			_, err = tx.CreateBucketIfNotExists([]byte("routes"))
		}
		v := binary.BigEndian.AppendUint32(append([]byte(csvIndexVersion), id...), csvKeySum(prev))
		v = append(v, fault...)
		v = binary.BigEndian.AppendUint32(v, csvSum([]byte("csv"), v))
		return cmp.Or(err, meta.Put([]byte("csv"), v))
	})
	if err = cmp.Or(err, db.Sync(), db.Close()); err != nil {
		return 0, err
	}
	// Written while the CSV's change time was still racy, the index holds
	// only if the CSV's bytes are the same once that time has passed.
	racy := start.Before(ctime.Add(csvIndexRacy))
	time.Sleep(min(time.Until(ctime.Add(csvIndexRacy)), csvIndexRacy)) // a clock ahead: not forever
	if g, err := os.Open(file); err != nil {
		return 0, err
	} else {
		again, _, err := csvIdentity(g)
		resum := crc32.New(csvCRC)
		if racy && err == nil {
			_, err = io.Copy(resum, g)
		}
		g.Close()
		if err != nil || !bytes.Equal(again, id) || racy && resum.Sum32() != sum.Sum32() {
			return 0, fmt.Errorf("%s changed while indexed", file)
		}
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return 0, err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return patterns, nil
}

// checkCSVIndex verifies the index against a full parse of its CSV (each
// pattern's first server, or the parse's fault), else rebuilds it, and
// says which for `willi check`.
func checkCSVIndex(file, dir string, routes map[string]string, fault error) (string, error) {
	path := csvIndexPath(file, dir)
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	x, why := openCSVIndex(file, dir, f)
	f.Close()
	if x != nil {
		// Each record whole, under its pattern's key, with its server,
		// naming the key before it.
		n, whole, prev := 0, x.routes != nil, []byte(nil)
		if whole {
			x.routes.ForEach(func(k, v []byte) error {
				v, before, ok := csvRecord(k, v)
				pattern := string(k[min(2, len(k)):])
				s, found := routes[pattern]
				whole = whole && ok && found && s == string(v) && bytes.Equal(csvAppendKey(nil, pattern), k) && before == csvKeySum(prev)
				n, prev = n+1, k
				return nil
			})
			whole = whole && csvKeySum(prev) == x.last
		}
		x.close()
		if whole && n == len(routes) || fault != nil && x.err != nil && x.err.Error() == fault.Error() {
			return fmt.Sprintf("index %s: current, verified (%d patterns)", path, n), nil
		}
		why = "index disagrees with the file"
	}
	lock, err := lockCSVIndex(file, dir, true)
	if err != nil {
		return "", fmt.Errorf("index %s: %s, cannot rebuild: %w", path, why, err)
	}
	defer lock.Close()
	start := time.Now()
	n, err := buildCSVIndex(file, dir)
	if err != nil {
		return "", fmt.Errorf("index %s: %s, rebuild failed: %w", path, why, err)
	}
	return fmt.Sprintf("index %s: %s, rebuilt (%d patterns in %v)", path, why, n, time.Since(start).Round(time.Millisecond)), nil
}
