package etcdserver

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/protowire"
)

// A command that only reads (custos find without an agent) need not start
// a server: starting one replays the WAL and rebuilds etcd's index of
// every key revision, most of a second for 100,000 atoms, while the keys
// it needs are read from the database file in milliseconds. That is safe
// only when the file holds everything etcd has acknowledged, which is so
// after a server stopped cleanly (its Close commits the database) and
// nothing has written since. The clean file says so: Close writes it with
// the size and modification time of the database and WAL files, a start
// removes it, and OpenSnapshot reads the file only while it matches and
// while it holds the lock, so that no server can start meanwhile. After a
// crash (no clean file) the command starts a server as before, which
// replays the WAL, and whose Close writes the clean file.
const cleanFile = "clean"

// ErrNotClean means that the database file may lack writes that only the
// WAL holds (the server did not stop cleanly, or a server ran since): read
// the catalog through a server.
var ErrNotClean = errors.New("etcdserver: the catalog was not closed cleanly since it last ran")

// etcd's layout inside its data directory, and inside its bbolt database
// (go.etcd.io/etcd/server/v3/storage: schema.Key, mvcc revisions).
var keyBucket = []byte("key")

const (
	revBytes       = 8 + 1 + 8 // main revision, '_', sub revision (big-endian)
	markedRevBytes = revBytes + 1
	markTombstone  = 't'
)

// fingerprint names etcd's database and WAL files with their sizes and
// modification times. Every server run writes the WAL (and every commit
// the database), which changes it.
func fingerprint(dataDir string) (string, error) {
	member := filepath.Join(dataDir, etcdDir, "member")
	files := []string{filepath.Join(member, "snap", "db")}
	wals, err := filepath.Glob(filepath.Join(member, "wal", "*.wal"))
	if err != nil {
		return "", err
	}
	sort.Strings(wals)
	files = append(files, wals...)
	var b strings.Builder
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			return "", err
		}
		rel, _ := filepath.Rel(dataDir, f)
		fmt.Fprintf(&b, "%s %d %d\n", rel, fi.Size(), fi.ModTime().UnixNano())
	}
	return b.String(), nil
}

// markClean writes the clean file after a clean stop. A failure only
// costs the next read-only command a server start.
func markClean(dataDir string) {
	fp, err := fingerprint(dataDir)
	if err != nil {
		return
	}
	_ = writeAtomic(filepath.Join(dataDir, cleanFile), []byte(fp))
}

// unmarkClean removes the clean file before a server starts.
func unmarkClean(dataDir string) error {
	if err := os.Remove(filepath.Join(dataDir, cleanFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("etcdserver: data dir %s: %w", dataDir, err)
	}
	return nil
}

func isClean(dataDir string) (bool, error) {
	want, err := os.ReadFile(filepath.Join(dataDir, cleanFile))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("etcdserver: data dir %s: %w", dataDir, err)
	}
	got, err := fingerprint(dataDir)
	if err != nil {
		return false, nil // a file is missing: let a server say what is wrong
	}
	return got == string(want), nil
}

// Snapshot is the catalog as a cleanly stopped server left it, read from
// its database file: every live key at the last revision. It holds the
// data directory's lock until Close, so no server starts meanwhile.
type Snapshot struct {
	lock *os.File
	db   *bolt.DB
	tx   *bolt.Tx
	rev  int64
	// Keys are grouped by namespace (see groupOf), each group sorted when
	// a read first needs it: sorting the 100,000 atom keys of a large
	// catalog would cost a find that reads only dataset records as much
	// as reading the file. named are the groups by name, in name order.
	named []*snapGroup
	misc  *snapGroup
}

// snapGroup is the key versions of one namespace. Their keys and values
// point into the database's memory map: Range copies what it returns.
type snapGroup struct {
	name   []byte
	once   sync.Once
	kvs    []snapKV // in revision order, then (once) the live keys in key order
	sorted []snapKV
}

type snapKV struct {
	key, val                []byte
	create, mod, ver, lease int64
	main                    int64 // revision of this version (from the bucket key)
	tombstone               bool
}

// groupOf is the namespace of a key: the key up to its third "/"
// ("/custos/atom/"), or nil for a key with fewer (the misc group). Named
// groups are disjoint key intervals [name, prefixEnd(name)), in the order
// of their names.
func groupOf(key []byte) []byte {
	n := 0
	for i, c := range key {
		if c == '/' {
			if n++; n == 3 {
				return key[:i+1]
			}
		}
	}
	return nil
}

// live sorts the group's versions by key, then revision, and keeps the
// last of each key (its current version) unless it is a deletion. A key
// has one version per main revision (a transaction changes a key once).
func (g *snapGroup) live() []snapKV {
	g.once.Do(func() {
		all := g.kvs
		slices.SortFunc(all, func(a, b snapKV) int {
			if c := bytes.Compare(a.key, b.key); c != 0 {
				return c
			}
			return cmp.Compare(a.main, b.main)
		})
		out := all[:0]
		for i := range all {
			if i+1 < len(all) && bytes.Equal(all[i].key, all[i+1].key) {
				continue
			}
			if !all[i].tombstone {
				out = append(out, all[i])
			}
		}
		g.sorted, g.kvs = out, nil
	})
	return g.sorted
}

// OpenSnapshot reads the catalog of dataDir from its database file. It
// fails with ErrLocked while a server (or another snapshot) holds the
// data directory, with ErrNotClean when the file may lack acknowledged
// writes, and with ErrDamaged when the file cannot be read.
func OpenSnapshot(dataDir string) (*Snapshot, error) {
	lock, err := lockDir(filepath.Join(dataDir, lockFile))
	if err != nil {
		if errors.Is(err, ErrLocked) {
			return nil, err
		}
		return nil, fmt.Errorf("etcdserver: data dir %s: %w", dataDir, err)
	}
	s, err := openSnapshot(dataDir, lock)
	if err != nil {
		unlockDir(lock)
		return nil, err
	}
	return s, nil
}

func openSnapshot(dataDir string, lock *os.File) (*Snapshot, error) {
	clean, err := isClean(dataDir)
	if err != nil {
		return nil, err
	}
	if !clean {
		return nil, ErrNotClean
	}
	p := dbPath(dataDir)
	s := &Snapshot{lock: lock}
	// Read in a goroutine of its own, so that a fault on a page outside
	// the file panics (SetPanicOnFault is per goroutine) and the panic is
	// recovered there: bbolt panics on much damage.
	done := make(chan error, 1)
	go func() {
		done <- s.read(p)
	}()
	if err := <-done; err != nil {
		s.closeDB()
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, ErrLocked
		}
		return nil, fmt.Errorf("%w: %s: %w", ErrDamaged, p, err)
	}
	return s, nil
}

func (s *Snapshot) read(p string) (err error) {
	debug.SetPanicOnFault(true)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	s.db, err = bolt.Open(p, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return err
	}
	s.tx, err = s.db.Begin(false)
	if err != nil {
		return err
	}
	b := s.tx.Bucket(keyBucket)
	if b == nil {
		return nil // a database without keys
	}
	groups := map[string]*snapGroup{}
	s.misc = &snapGroup{}
	var last *snapGroup
	c := b.Cursor()
	for rk, v := c.First(); rk != nil; rk, v = c.Next() {
		if len(rk) != revBytes && len(rk) != markedRevBytes {
			return fmt.Errorf("revision key %x has %d bytes", rk, len(rk))
		}
		kv, err := parseKV(v)
		if err != nil {
			return fmt.Errorf("revision %x: %w", rk, err)
		}
		kv.main = int64(binary.BigEndian.Uint64(rk))
		kv.tombstone = len(rk) == markedRevBytes && rk[revBytes] == markTombstone
		s.rev = max(s.rev, kv.main)
		g := s.misc
		if name := groupOf(kv.key); name != nil {
			// Writes come in runs of one namespace: look up only when
			// it changes.
			if last != nil && bytes.Equal(last.name, name) {
				g = last
			} else if g = groups[string(name)]; g == nil {
				g = &snapGroup{name: name}
				groups[string(name)] = g
			}
			last = g
		}
		g.kvs = append(g.kvs, kv)
	}
	for _, g := range groups {
		s.named = append(s.named, g)
	}
	slices.SortFunc(s.named, func(a, b *snapGroup) int { return bytes.Compare(a.name, b.name) })
	return nil
}

// parseKV reads the fields of an mvccpb.KeyValue without copying.
func parseKV(b []byte) (snapKV, error) {
	var kv snapKV
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return kv, protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case typ == protowire.BytesType && (num == 1 || num == 5):
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return kv, protowire.ParseError(n)
			}
			if num == 1 {
				kv.key = v
			} else {
				kv.val = v
			}
			b = b[n:]
		case typ == protowire.VarintType && num >= 2 && num <= 6:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return kv, protowire.ParseError(n)
			}
			switch num {
			case 2:
				kv.create = int64(v)
			case 3:
				kv.mod = int64(v)
			case 4:
				kv.ver = int64(v)
			case 6:
				kv.lease = int64(v)
			}
			b = b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return kv, protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	if kv.key == nil {
		return kv, errors.New("key value without a key")
	}
	return kv, nil
}

// Rev is the revision of the snapshot: the last one the database holds.
func (s *Snapshot) Rev() int64 { return s.rev }

// Range returns the live keys of [key, end), as etcd's range does: end
// nil is key alone, end "\x00" every key from key on; at most limit keys
// (0: all), values left out with keysOnly. count is the number of keys in
// the range. The keys and values are copies.
func (s *Snapshot) Range(key, end []byte, limit int64, keysOnly bool) (kvs []*mvccpb.KeyValue, count int64) {
	single := len(end) == 0
	if single {
		end = append(bytes.Clone(key), 0) // [key, key+"\x00")
	}
	unbounded := len(end) == 1 && end[0] == 0
	in := func(g *snapGroup) []snapKV {
		l := g.live()
		lo := sort.Search(len(l), func(i int) bool { return bytes.Compare(l[i].key, key) >= 0 })
		if unbounded {
			return l[lo:]
		}
		return l[lo : lo+sort.Search(len(l)-lo, func(i int) bool { return bytes.Compare(l[lo+i].key, end) >= 0 })]
	}
	// The named groups that meet the range, in order, hold one sorted
	// run; the misc group's keys may fall anywhere in between.
	var run []snapKV
	for _, g := range s.named {
		if !unbounded && bytes.Compare(g.name, end) >= 0 {
			break
		}
		if gend := prefixEnd(g.name); gend != nil && bytes.Compare(gend, key) <= 0 {
			continue
		}
		run = append(run, in(g)...)
	}
	misc := in(s.misc)
	count = int64(len(run) + len(misc))
	n := len(run) + len(misc)
	if limit > 0 && count > limit {
		n = int(limit)
	}
	kvs = make([]*mvccpb.KeyValue, 0, n)
	for len(kvs) < n {
		var kv snapKV
		if len(misc) == 0 || (len(run) > 0 && bytes.Compare(run[0].key, misc[0].key) < 0) {
			kv, run = run[0], run[1:]
		} else {
			kv, misc = misc[0], misc[1:]
		}
		out := &mvccpb.KeyValue{Key: bytes.Clone(kv.key), CreateRevision: kv.create, ModRevision: kv.mod, Version: kv.ver, Lease: kv.lease}
		if !keysOnly {
			out.Value = bytes.Clone(kv.val)
		}
		kvs = append(kvs, out)
	}
	return kvs, count
}

// prefixEnd is the first key after every key that starts with p (nil:
// there is none).
func prefixEnd(p []byte) []byte {
	e := bytes.Clone(p)
	for i := len(e) - 1; i >= 0; i-- {
		if e[i] < 0xff {
			e[i]++
			return e[:i+1]
		}
	}
	return nil
}

// Close releases the database and the data directory.
func (s *Snapshot) Close() error {
	err := s.closeDB()
	unlockDir(s.lock)
	s.lock = nil
	return err
}

func (s *Snapshot) closeDB() error {
	var err error
	if s.tx != nil {
		err = s.tx.Rollback()
		s.tx = nil
	}
	if s.db != nil {
		err = errors.Join(err, s.db.Close())
		s.db = nil
	}
	s.named, s.misc = nil, nil
	return err
}
