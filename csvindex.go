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
// was built from, the CRC of the last key and, for a malformed CSV, its
// fault. Bucket "routes" maps each pattern (after a 2-byte hash prefix that
// spreads the patterns over the build's passes) to its first row's server
// and the CRC of the key before it (csvKeySum). bbolt checksums only its
// meta pages, so every record ends with a CRC-32C of its key and value; a
// hit checks its record, a miss the records on both sides of the key, their
// order, and that they are neighbours (a damaged branch page can lead a
// search into the wrong leaf): a damaged index is noticed, not trusted.
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

// csvCRC is the table of the index's checksums: the standard library makes
// it when first asked, so a process that needs none pays nothing.
func csvCRC() *crc32.Table { return crc32.MakeTable(crc32.Castagnoli) }

var (
	errCSVIndexCorrupt = errors.New("csv index corrupt")
	// csvIndexBuilds are the rebuilds this process runs: it waits for them
	// before it exits, after its session has ended. They run one at a
	// time (csvIndexBuilding): each may take up to its soft memory limit,
	// under the unit's MemoryMax=.
	csvIndexBuilds   sync.WaitGroup
	csvIndexBuilding sync.Mutex
	csvIndexLog      = sync.OnceValue(newLogger)
	csvIndexWarned   sync.Once
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
func csvIdentity(f *os.File) (id []byte, err error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	st := fi.Sys().(*syscall.Stat_t)
	for _, v := range []int64{int64(st.Dev), int64(st.Ino), st.Size, st.Mtim.Nano(), st.Ctim.Nano()} {
		id = binary.BigEndian.AppendUint64(id, uint64(v))
	}
	head, tail := make([]byte, 4<<10), make([]byte, 4<<10)
	n1, err1 := f.ReadAt(head, 0)
	n2, err2 := f.ReadAt(tail, max(0, st.Size-4<<10))
	if err = cmp.Or(err1, err2); err != nil && err != io.EOF {
		return nil, err
	}
	return binary.BigEndian.AppendUint32(id, crc32.Update(crc32.Checksum(head[:n1], csvCRC()), csvCRC(), tail[:n2])), nil
}

// csvSum is the CRC a stored value ends with, proof that the record is whole.
func csvSum(key, value []byte) uint32 {
	return crc32.Update(crc32.Checksum(key, csvCRC()), csvCRC(), value)
}

// csvUnseal is a stored value without its CRC, and whether the CRC holds.
func csvUnseal(key, v []byte) ([]byte, bool) {
	if len(v) < 4 {
		return nil, false
	}
	return v[:len(v)-4], csvSum(key, v[:len(v)-4]) == binary.BigEndian.Uint32(v[len(v)-4:])
}

// csvKeySum is the CRC by which a record names the key before it; 0 for none.
func csvKeySum(k []byte) uint32 {
	if k == nil {
		return 0
	}
	return crc32.Checksum(k, csvCRC()) | 1
}

// csvAppendKey appends pattern's key in the index: a 2-byte hash, then the pattern.
func csvAppendKey(b []byte, pattern string) []byte {
	b = append(append(b, 0, 0), pattern...)
	binary.BigEndian.PutUint16(b[len(b)-len(pattern)-2:], uint16(crc32.Checksum(b[len(b)-len(pattern):], csvCRC())>>16))
	return b
}

// csvGuarded runs f, which reads the index's mapped file: a fault (a file
// cut short) or a panic of bbolt's on a damaged page is errCSVIndexCorrupt.
func csvGuarded(db *bolt.DB, f func(tx *bolt.Tx) error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if recover() != nil {
			err = errCSVIndexCorrupt
		}
	}()
	return db.View(f)
}

// csvIndex is an index found current for the CSV a lookup opened.
type csvIndex struct {
	db   *bolt.DB
	last uint32 // csvKeySum of the last key
	err  error  // the CSV's fault, for a malformed CSV
}

// openCSVIndex returns the index when it is current for f, else nil and why.
func openCSVIndex(file, dir string, f *os.File) (*csvIndex, string) {
	id, err := csvIdentity(f)
	if err != nil {
		return nil, "index not checked: " + err.Error()
	}
	var idx *os.File // bbolt does not compare the file's size with its pages
	db, err := bolt.Open(csvIndexPath(file, dir), 0, &bolt.Options{ReadOnly: true, Timeout: time.Millisecond,
		OpenFile: func(p string, fl int, m os.FileMode) (*os.File, error) {
			idx, err = os.OpenFile(p, fl, m)
			return idx, err
		}})
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil, "no index yet"
	} else if err != nil {
		return nil, "index unreadable or corrupt"
	}
	x, why := &csvIndex{db: db}, "index corrupt"
	err = csvGuarded(db, func(tx *bolt.Tx) error {
		fi, err := idx.Stat()
		meta := tx.Bucket([]byte("meta"))
		if err != nil || fi.Size() < tx.Size() || meta == nil || tx.Bucket([]byte("routes")) == nil {
			return nil // cut short, or not ours
		}
		v, ok := csvUnseal([]byte("csv"), meta.Get([]byte("csv")))
		switch {
		case !ok:
		case !bytes.HasPrefix(v, []byte(csvIndexVersion)):
			why = "index from another version"
		case !bytes.HasPrefix(v[len(csvIndexVersion):], id) || len(v) < len(csvIndexVersion)+len(id)+4:
			why = "index stale"
		default:
			v = v[len(csvIndexVersion)+len(id):]
			if x.last, v, why = binary.BigEndian.Uint32(v), v[4:], ""; len(v) > 0 {
				line, n := binary.Uvarint(v)
				x.err = &csvError{file, int(line), string(v[n:])}
			}
		}
		return nil
	})
	if err != nil {
		why = "index corrupt" // a fault part way: nothing read from it is trusted
	}
	if why != "" {
		db.Close()
		return nil, why
	}
	return x, ""
}

// lookup returns each key's server ("" none) from the index, or
// errCSVIndexCorrupt when the record it finds or, for a miss, the records
// on both sides of the key or their order show damage.
func (x *csvIndex) lookup(keys []string) ([]string, error) {
	if x.err != nil {
		return nil, x.err
	}
	out := make([]string, len(keys))
	return out, csvGuarded(x.db, func(tx *bolt.Tx) error {
		for i, k := range keys {
			key := csvAppendKey(nil, k)
			c := tx.Bucket([]byte("routes")).Cursor()
			nk, nv := c.Seek(key)
			v, ok := csvUnseal(nk, nv)
			if nk != nil && (!ok || len(v) < 4 || bytes.Compare(nk, key) < 0) {
				return errCSVIndexCorrupt
			} else if bytes.Equal(nk, key) {
				out[i] = string(v[:len(v)-4])
				continue
			}
			pk, pv := c.Prev()
			next := x.last // the CRC the record after pk names it by
			if nk != nil {
				next = binary.BigEndian.Uint32(v[len(v)-4:])
			} else {
				pk, pv = c.Last()
			}
			if _, pok := csvUnseal(pk, pv); next != csvKeySum(pk) || pk != nil && (!pok || bytes.Compare(pk, key) >= 0) {
				return errCSVIndexCorrupt
			}
		}
		return nil
	})
}

// lockCSVIndex takes the rebuild lock of file's index, waiting for it or not.
func lockCSVIndex(file, dir string, wait bool) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	// Read-only is enough for flock, and works on a lock file another
	// user (root running willi check) created.
	l, err := os.OpenFile(csvIndexPath(file, dir)+".lock", os.O_CREATE|os.O_RDONLY, 0o640)
	if err == nil && !wait {
		err = syscall.Flock(int(l.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	} else if err == nil {
		err = syscall.Flock(int(l.Fd()), syscall.LOCK_EX)
	}
	if err != nil && l != nil {
		l.Close()
	}
	return l, err
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
		csvIndexBuilding.Lock()
		defer csvIndexBuilding.Unlock()
		if n, err := buildCSVIndex(file, dir); err != nil {
			csvIndexLog().Warn("csv index rebuild failed", "file", file, "err", err)
		} else {
			csvIndexLog().Debug("csv index rebuilt", "file", file, "patterns", n)
		}
	}()
	return "rebuilding the index"
}

// buildCSVIndex writes the index into a temporary file, syncs it and renames
// it into place; the caller holds the lock. Each pass keeps the rows of one
// range of key hashes (about csvIndexPassBytes of the CSV), sorts them and
// appends them to the tree, so that memory stays bounded.
func buildCSVIndex(file, dir string) (int, error) {
	f, err := os.Open(file)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	id, err := csvIdentity(f)
	if err != nil {
		return 0, err
	}
	// A CSV changed within its file system's time tick may change again with
	// the same times: wait until that tick is over, then take them again.
	if wait := time.Until(time.Unix(0, int64(binary.BigEndian.Uint64(id[32:]))).Add(csvIndexRacy)); wait > 0 {
		time.Sleep(min(wait, csvIndexRacy)) // a clock ahead: not forever
		if id, err = csvIdentity(f); err != nil {
			return 0, err
		}
	}
	path, size := csvIndexPath(file, dir), int64(binary.BigEndian.Uint64(id[16:]))
	os.Remove(path + ".tmp") // left by a process that died building
	db, err := bolt.Open(path+".tmp", 0o640, &bolt.Options{NoSync: true, NoFreelistSync: true, InitialMmapSize: 4 * int(size)})
	if err != nil {
		return 0, err
	}
	defer os.Remove(path + ".tmp")
	defer db.Close()
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(csvIndexMemory))
	type row struct{ off, klen, end int } // in the pass's arena: key, server, CRC of the key before, CRC
	passes, patterns, fault, before := 1+int(size/csvIndexPassBytes), 0, []byte(nil), uint32(0)
	for pass := 0; pass < passes && fault == nil; pass++ {
		arena, rows := make([]byte, 0, size/int64(passes)*5/4), []row(nil)
		err := readCSV(file, f, func(_ int, pattern, server string) error {
			off := len(arena)
			if arena = csvAppendKey(arena, pattern); int(arena[off])*passes>>8 != pass {
				arena = arena[:off] // another pass's
				return nil
			}
			arena = append(append(arena, server...), 0, 0, 0, 0, 0, 0, 0, 0) // CRCs set when stored
			rows = append(rows, row{off, len(pattern) + 2, len(arena)})
			return nil
		})
		if ce := (*csvError)(nil); errors.As(err, &ce) {
			fault = append(binary.AppendUvarint(nil, uint64(ce.line)), ce.msg...)
		} else if err != nil {
			return 0, err
		}
		key := func(r row) []byte { return arena[r.off : r.off+r.klen] }
		slices.SortFunc(rows, func(a, b row) int { return cmp.Or(bytes.Compare(key(a), key(b)), a.off-b.off) })
		rows = slices.CompactFunc(rows, func(a, b row) bool { return bytes.Equal(key(a), key(b)) }) // the first row wins
		for n := 0; fault == nil && len(rows) > 0; rows, patterns = rows[n:], patterns+n {
			n = min(len(rows), 1<<16) // rows per transaction, which holds them in memory
			err := db.Update(func(tx *bolt.Tx) error {
				b, err := tx.CreateBucketIfNotExists([]byte("routes"))
				for _, r := range rows[:n] {
					if rec := arena[r.off:r.end]; err == nil {
						binary.BigEndian.PutUint32(rec[len(rec)-8:], before)
						binary.BigEndian.PutUint32(rec[len(rec)-4:], crc32.Checksum(rec[:len(rec)-4], csvCRC()))
						before, b.FillPercent = csvKeySum(key(r)), 1 // appended in order: full pages
						err = b.Put(key(r), rec[r.klen:])
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
		_, err := tx.CreateBucketIfNotExists([]byte("routes")) // none when the CSV has no rows
		meta, err2 := tx.CreateBucketIfNotExists([]byte("meta"))
		if err = cmp.Or(err, err2); err != nil {
			return err
		}
		v := append(binary.BigEndian.AppendUint32(append([]byte(csvIndexVersion), id...), before), fault...)
		return meta.Put([]byte("csv"), binary.BigEndian.AppendUint32(v, csvSum([]byte("csv"), v)))
	})
	if err = cmp.Or(err, db.Sync(), db.Close()); err != nil {
		return 0, err
	}
	if g, err := os.Open(file); err != nil { // an edit since it was opened discards the index
		return 0, err
	} else if again, err := csvIdentity(g); g.Close() != nil || err != nil || !bytes.Equal(again, id) {
		return 0, cmp.Or(err, fmt.Errorf("%s changed while indexed", file))
	}
	// Not followed by a sync of the folder: a crash may leave the old index,
	// whose identity no longer matches, or none; either is rebuilt.
	return patterns, os.Rename(path+".tmp", path)
}

// checkCSVIndex verifies the index against a full parse of its CSV (each
// pattern's first server, the count, each record's CRC; or the parse's
// fault), else rebuilds it, and says which for `willi check`.
func checkCSVIndex(file, dir string, f *os.File, routes map[string]csvFirst, fault error) (string, error) {
	path := csvIndexPath(file, dir)
	x, why := openCSVIndex(file, dir, f)
	if x != nil {
		n, whole, before := 0, true, uint32(0)
		err := csvGuarded(x.db, func(tx *bolt.Tx) error {
			tx.Bucket([]byte("routes")).ForEach(func(k, v []byte) error {
				v, ok := csvUnseal(k, v)
				pattern := string(k[min(2, len(k)):])
				first, found := routes[pattern]
				whole = whole && ok && found && len(v) >= 4 && binary.BigEndian.Uint32(v[len(v)-4:]) == before &&
					first.server == string(v[:len(v)-4]) && bytes.Equal(csvAppendKey(nil, pattern), k)
				before, n = csvKeySum(k), n+1
				return nil
			})
			whole = whole && before == x.last
			return nil
		})
		x.db.Close()
		// The same fault, or none and the same routes.
		if err == nil && fmt.Sprint(x.err) == fmt.Sprint(fault) && (fault != nil || whole && n == len(routes)) {
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
