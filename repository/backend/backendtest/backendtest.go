// Package backendtest is the conformance suite that every backend.Backend
// implementation must pass. A backend's tests call Run with a constructor
// that returns a fresh, empty backend for each subtest.
//
// Semantics the suite pins down (beyond the interface comments):
//   - Saving over an existing object replaces it; a reader then sees the new
//     content in full (last writer wins).
//   - ConfigFile has a single object whatever the handle's Name; List of
//     ConfigFile reports it with the name "config".
//   - Load with a range that runs past the end of the object is an error
//     (from Load or from reading), never silently short data. offset == size
//     with length 0 is an empty read.
//   - A Save that fails (reader shorter or longer than size, cancelled
//     context) leaves no object.
//   - Handles with an empty name, or a name with a path separator, are
//     rejected.
//   - Errors for missing objects wrap backend.ErrNotExist; errors caused by a
//     cancelled context wrap context.Canceled.
//
// Next to the suite live the test doubles that repository tests build on
// (as kopia's internal/blobtesting has them): Mem, an in-memory backend
// that passes the suite, and Faulty, a wrapper around any real backend
// that fails, pauses or observes chosen calls and records the order of
// all of them. A test double only ever wraps or replaces storage; the
// repository code under test is the real one.
package backendtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/custos-backup/custos/repository/backend"
)

// LargeSize is the size of the suite's large object: above the multipart
// threshold a backend's tests should configure (S3 parts must be >= 5 MiB,
// so a 5 MiB part size gives three parts).
const LargeSize = 11<<20 + 4321

// allTypes lists every object kind, config first.
var allTypes = []backend.FileType{
	backend.ConfigFile, backend.KeyFile, backend.PackFile,
	backend.IndexFile, backend.SnapshotFile, backend.LockFile,
}

// Run runs the conformance suite. newBackend must return a new, empty backend
// each time it is called; it should register its own cleanup with t.
func Run(t *testing.T, newBackend func(t *testing.T) backend.Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, be backend.Backend)
	}{
		{"Location", testLocation},
		{"RoundTripAllTypes", testRoundTrip},
		{"PackFanOut", testPackFanOut},
		{"RangedReads", testRangedReads},
		{"ZeroLength", testZeroLength},
		{"ListEmpty", testListEmpty},
		{"List", testList},
		{"ListCallbackError", testListCallbackError},
		{"Remove", testRemove},
		{"Missing", testMissing},
		{"Overwrite", testOverwrite},
		{"InvalidHandles", testInvalidHandles},
		{"ShortReader", testShortReader},
		{"LongReader", testLongReader},
		{"SaveFromMidStream", testSaveFromMidStream},
		{"Concurrent", testConcurrent},
		{"Large", testLarge},
		{"CancelledContext", testCancelledContext},
		{"CancelDuringSave", testCancelDuringSave},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			be := newBackend(t)
			tc.fn(t, be)
		})
	}
}

// randomName returns a fresh 64-hex-char name, like a repository ID.
func randomName(rng *rand.Rand) string {
	var b [32]byte
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return hex.EncodeToString(b[:])
}

func randomData(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], rng.Uint64())
		copy(b[i:], w[:])
	}
	return b
}

func newRNG(t *testing.T) *rand.Rand {
	// Seeded from the test name so failures reproduce.
	sum := sha256.Sum256([]byte(t.Name()))
	return rand.New(rand.NewChaCha8(sum))
}

func save(t *testing.T, be backend.Backend, h backend.Handle, data []byte) {
	t.Helper()
	if err := be.Save(context.Background(), h, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Save(%v, %d bytes): %v", h, len(data), err)
	}
}

func load(t *testing.T, be backend.Backend, h backend.Handle, length int, offset int64) []byte {
	t.Helper()
	rd, err := be.Load(context.Background(), h, length, offset)
	if err != nil {
		t.Fatalf("Load(%v, length %d, offset %d): %v", h, length, offset, err)
	}
	defer rd.Close()
	got, err := io.ReadAll(rd)
	if err != nil {
		t.Fatalf("Load(%v, length %d, offset %d): read: %v", h, length, offset, err)
	}
	return got
}

// loadErr loads and reads a range, returning the first error from Load or
// reading.
func loadErr(be backend.Backend, h backend.Handle, length int, offset int64) ([]byte, error) {
	rd, err := be.Load(context.Background(), h, length, offset)
	if err != nil {
		return nil, err
	}
	got, err := io.ReadAll(rd)
	if cerr := rd.Close(); err == nil {
		err = cerr
	}
	return got, err
}

func listAll(t *testing.T, be backend.Backend, ft backend.FileType) map[string]int64 {
	t.Helper()
	got := map[string]int64{}
	err := be.List(context.Background(), ft, func(fi backend.FileInfo) error {
		if _, dup := got[fi.Name]; dup {
			t.Errorf("List(%s) reported %q twice", ft, fi.Name)
		}
		got[fi.Name] = fi.Size
		return nil
	})
	if err != nil {
		t.Fatalf("List(%s): %v", ft, err)
	}
	return got
}

func sameContent(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: got %d bytes (sha256 %x), want %d bytes (sha256 %x)",
			what, len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
	}
}

// assertGone checks the result of removing a missing object: success, or
// an error wrapping backend.ErrNotExist (see Backend.Remove).
func assertGone(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil && !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("%s: error %q, want none or one wrapping backend.ErrNotExist", what, err)
	}
}

func assertNotExist(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want one wrapping backend.ErrNotExist", what)
	}
	if !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("%s: error %q does not wrap backend.ErrNotExist", what, err)
	}
}

func handleName(h backend.Handle) string {
	if h.Type == backend.ConfigFile {
		return "config"
	}
	return h.Name
}

func testLocation(t *testing.T, be backend.Backend) {
	if be.Location() == "" {
		t.Fatal("Location() is empty")
	}
}

func testRoundTrip(t *testing.T, be backend.Backend) {
	rng := newRNG(t)
	ctx := context.Background()
	var configData []byte
	for i, ft := range allTypes {
		h := backend.Handle{Type: ft, Name: randomName(rng)}
		data := randomData(rng, 100+i*1000)
		if ft == backend.ConfigFile {
			h.Name = ""
			configData = data
		}
		save(t, be, h, data)
		sameContent(t, fmt.Sprintf("Load(%v)", h), load(t, be, h, 0, 0), data)
		fi, err := be.Stat(ctx, h)
		if err != nil {
			t.Fatalf("Stat(%v): %v", h, err)
		}
		if fi.Size != int64(len(data)) {
			t.Errorf("Stat(%v).Size = %d, want %d", h, fi.Size, len(data))
		}
		if fi.Name != handleName(h) {
			t.Errorf("Stat(%v).Name = %q, want %q", h, fi.Name, handleName(h))
		}
		got := listAll(t, be, ft)
		want := map[string]int64{handleName(h): int64(len(data))}
		if !equalMaps(got, want) {
			t.Errorf("List(%s) = %v, want %v", ft, got, want)
		}
	}
	// The config object does not depend on the name in its handle.
	sameContent(t, "Load(config with another name)",
		load(t, be, backend.Handle{Type: backend.ConfigFile, Name: "whatever"}, 0, 0), configData)
}

func equalMaps(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func testPackFanOut(t *testing.T, be backend.Backend) {
	names := []string{
		"00" + strings.Repeat("a", 62),
		"0f" + strings.Repeat("b", 62),
		"ab" + strings.Repeat("c", 62),
		"ab" + strings.Repeat("d", 62),
		"ff" + strings.Repeat("e", 62),
	}
	want := map[string]int64{}
	for i, name := range names {
		h := backend.Handle{Type: backend.PackFile, Name: name}
		if p, wantPath := h.Path(), "data/"+name[:2]+"/"+name; p != wantPath {
			t.Fatalf("Handle%v.Path() = %q, want %q", h, p, wantPath)
		}
		data := bytes.Repeat([]byte{byte(i)}, 10+i)
		save(t, be, h, data)
		want[name] = int64(len(data))
	}
	if got := listAll(t, be, backend.PackFile); !equalMaps(got, want) {
		t.Fatalf("List(data) = %v, want %v", got, want)
	}
	for i, name := range names {
		got := load(t, be, backend.Handle{Type: backend.PackFile, Name: name}, 0, 0)
		sameContent(t, "Load "+name, got, bytes.Repeat([]byte{byte(i)}, 10+i))
	}
	// Packs are not listed as other kinds.
	if got := listAll(t, be, backend.IndexFile); len(got) != 0 {
		t.Fatalf("List(index) after saving only packs = %v", got)
	}
}

func testRangedReads(t *testing.T, be backend.Backend) {
	rng := newRNG(t)
	const size = 1000
	data := randomData(rng, size)
	h := backend.Handle{Type: backend.PackFile, Name: randomName(rng)}
	save(t, be, h, data)

	tests := []struct {
		name    string
		length  int
		offset  int64
		wantErr bool
	}{
		{"whole", 0, 0, false},
		{"exact length", size, 0, false},
		{"head", 10, 0, false},
		{"middle", 100, 450, false},
		{"to end by length 0", 0, 900, false},
		{"last byte", 1, size - 1, false},
		{"tail exact", 5, size - 5, false},
		{"offset at end length 0", 0, size, false},
		{"length beyond end", 10, size - 5, true},
		{"whole plus one", size + 1, 0, true},
		{"offset at end length 1", 1, size, true},
		{"offset beyond end", 0, size + 1, true},
		{"offset far beyond end", 10, 10 * size, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := loadErr(be, h, tc.length, tc.offset)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("Load(length %d, offset %d) of a %d-byte object gave %d bytes and no error",
						tc.length, tc.offset, size, len(got))
				}
				if errors.Is(err, backend.ErrNotExist) {
					t.Fatalf("Load(length %d, offset %d): error %q wraps ErrNotExist, but the object exists",
						tc.length, tc.offset, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load(length %d, offset %d): %v", tc.length, tc.offset, err)
			}
			end := int64(size)
			if tc.length > 0 {
				end = tc.offset + int64(tc.length)
			}
			sameContent(t, fmt.Sprintf("Load(length %d, offset %d)", tc.length, tc.offset), got, data[tc.offset:end])
		})
	}
}

func testZeroLength(t *testing.T, be backend.Backend) {
	rng := newRNG(t)
	for _, ft := range []backend.FileType{backend.PackFile, backend.LockFile} {
		h := backend.Handle{Type: ft, Name: randomName(rng)}
		save(t, be, h, nil)
		fi, err := be.Stat(context.Background(), h)
		if err != nil {
			t.Fatalf("Stat(%v): %v", h, err)
		}
		if fi.Size != 0 {
			t.Fatalf("Stat(%v).Size = %d, want 0", h, fi.Size)
		}
		if got := load(t, be, h, 0, 0); len(got) != 0 {
			t.Fatalf("Load(%v) of empty object gave %d bytes", h, len(got))
		}
		if _, err := loadErr(be, h, 1, 0); err == nil {
			t.Fatalf("Load(%v, length 1) of empty object: no error", h)
		}
		got := listAll(t, be, ft)
		if size, ok := got[h.Name]; !ok || size != 0 {
			t.Fatalf("List(%s) = %v, want %s with size 0", ft, got, h.Name)
		}
	}
}

func testListEmpty(t *testing.T, be backend.Backend) {
	for _, ft := range allTypes {
		if got := listAll(t, be, ft); len(got) != 0 {
			t.Errorf("List(%s) on an empty backend = %v", ft, got)
		}
	}
}

func testList(t *testing.T, be backend.Backend) {
	rng := newRNG(t)
	want := map[backend.FileType]map[string]int64{}
	for _, ft := range allTypes[1:] {
		want[ft] = map[string]int64{}
		n := 3
		if ft == backend.PackFile {
			n = 40 // spread over many fan-out folders
		}
		for i := 0; i < n; i++ {
			h := backend.Handle{Type: ft, Name: randomName(rng)}
			data := randomData(rng, rng.IntN(200))
			save(t, be, h, data)
			want[ft][h.Name] = int64(len(data))
		}
	}
	for _, ft := range allTypes[1:] {
		if got := listAll(t, be, ft); !equalMaps(got, want[ft]) {
			t.Errorf("List(%s) = %v, want %v", ft, got, want[ft])
		}
	}
	if got := listAll(t, be, backend.ConfigFile); len(got) != 0 {
		t.Errorf("List(config) without a config = %v", got)
	}
	folders := map[string]bool{}
	for name := range want[backend.PackFile] {
		folders[name[:2]] = true
	}
	if len(folders) < 2 {
		t.Fatalf("test setup: packs landed in %d fan-out folders", len(folders))
	}
}

func testListCallbackError(t *testing.T, be backend.Backend) {
	rng := newRNG(t)
	for i := 0; i < 3; i++ {
		save(t, be, backend.Handle{Type: backend.IndexFile, Name: randomName(rng)}, []byte("x"))
	}
	stop := errors.New("stop here")
	calls := 0
	err := be.List(context.Background(), backend.IndexFile, func(backend.FileInfo) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) {
		t.Fatalf("List with a failing callback returned %v, want the callback's error", err)
	}
	if calls != 1 {
		t.Fatalf("List went on after the callback failed: %d calls", calls)
	}
}

func testRemove(t *testing.T, be backend.Backend) {
	rng := newRNG(t)
	ctx := context.Background()
	keep := backend.Handle{Type: backend.PackFile, Name: randomName(rng)}
	gone := backend.Handle{Type: backend.PackFile, Name: randomName(rng)}
	save(t, be, keep, []byte("keep"))
	save(t, be, gone, []byte("gone"))
	if err := be.Remove(ctx, gone); err != nil {
		t.Fatalf("Remove(%v): %v", gone, err)
	}
	_, err := be.Stat(ctx, gone)
	assertNotExist(t, "Stat after Remove", err)
	_, err = be.Load(ctx, gone, 0, 0)
	assertNotExist(t, "Load after Remove", err)
	if got := listAll(t, be, backend.PackFile); !equalMaps(got, map[string]int64{keep.Name: 4}) {
		t.Fatalf("List(data) after Remove = %v, want only %s", got, keep.Name)
	}
	assertGone(t, "second Remove", be.Remove(ctx, gone))
	cfg := backend.Handle{Type: backend.ConfigFile}
	save(t, be, cfg, []byte("cfg"))
	if err := be.Remove(ctx, cfg); err != nil {
		t.Fatalf("Remove(config): %v", err)
	}
	if got := listAll(t, be, backend.ConfigFile); len(got) != 0 {
		t.Fatalf("List(config) after Remove = %v", got)
	}
}

func testMissing(t *testing.T, be backend.Backend) {
	rng := newRNG(t)
	ctx := context.Background()
	// Something else exists, so the backend is not merely empty.
	save(t, be, backend.Handle{Type: backend.KeyFile, Name: randomName(rng)}, []byte("k"))
	for _, ft := range allTypes {
		h := backend.Handle{Type: ft, Name: randomName(rng)}
		_, err := be.Stat(ctx, h)
		assertNotExist(t, fmt.Sprintf("Stat(missing %v)", h), err)
		rd, err := be.Load(ctx, h, 0, 0)
		if err == nil {
			rd.Close()
		}
		assertNotExist(t, fmt.Sprintf("Load(missing %v)", h), err)
		rd, err = be.Load(ctx, h, 10, 5)
		if err == nil {
			rd.Close()
		}
		assertNotExist(t, fmt.Sprintf("Load(missing %v, range)", h), err)
		assertGone(t, fmt.Sprintf("Remove(missing %v)", h), be.Remove(ctx, h))
		if ft != backend.ConfigFile && !strings.Contains(fmt.Sprint(err), h.Name) {
			t.Errorf("error %q does not name the object %s", err, h.Name)
		}
	}
}

func testOverwrite(t *testing.T, be backend.Backend) {
	rng := newRNG(t)
	for _, h := range []backend.Handle{
		{Type: backend.ConfigFile},
		{Type: backend.LockFile, Name: randomName(rng)},
		{Type: backend.PackFile, Name: randomName(rng)},
	} {
		first := randomData(rng, 5000)
		second := randomData(rng, 1234)
		save(t, be, h, first)
		save(t, be, h, second)
		sameContent(t, fmt.Sprintf("Load(%v) after overwrite", h), load(t, be, h, 0, 0), second)
		fi, err := be.Stat(context.Background(), h)
		if err != nil || fi.Size != int64(len(second)) {
			t.Fatalf("Stat(%v) after overwrite = %+v, %v; want size %d", h, fi, err, len(second))
		}
		if got := listAll(t, be, h.Type); len(got) != 1 || got[handleName(h)] != int64(len(second)) {
			t.Fatalf("List(%s) after overwrite = %v", h.Type, got)
		}
	}
}

func testInvalidHandles(t *testing.T, be backend.Backend) {
	ctx := context.Background()
	for _, h := range []backend.Handle{
		{Type: backend.PackFile, Name: ""},
		{Type: backend.SnapshotFile, Name: ""},
		{Type: backend.KeyFile, Name: "a/b"},
		{Type: backend.IndexFile, Name: ".."},
		{Type: backend.FileType("bogus"), Name: "abc"},
	} {
		if err := be.Save(ctx, h, bytes.NewReader([]byte("x")), 1); err == nil {
			t.Errorf("Save(%#v) succeeded, want an error", h)
		}
		if _, err := be.Stat(ctx, h); err == nil {
			t.Errorf("Stat(%#v) succeeded, want an error", h)
		}
	}
	for _, ft := range allTypes {
		if got := listAll(t, be, ft); len(got) != 0 {
			t.Errorf("List(%s) after invalid saves = %v", ft, got)
		}
	}
}

func testShortReader(t *testing.T, be backend.Backend) {
	rng := newRNG(t)
	ctx := context.Background()
	h := backend.Handle{Type: backend.PackFile, Name: randomName(rng)}
	data := randomData(rng, 100)
	if err := be.Save(ctx, h, bytes.NewReader(data), 200); err == nil {
		t.Fatal("Save with a reader shorter than size succeeded")
	}
	_, err := be.Stat(ctx, h)
	assertNotExist(t, "Stat after failed Save", err)
	if got := listAll(t, be, backend.PackFile); len(got) != 0 {
		t.Fatalf("List(data) after failed Save = %v", got)
	}
}

// testLongReader: a reader with more than size bytes means the caller got the
// size wrong; storing a truncated object would hide that.
func testLongReader(t *testing.T, be backend.Backend) {
	rng := newRNG(t)
	ctx := context.Background()
	h := backend.Handle{Type: backend.IndexFile, Name: randomName(rng)}
	if err := be.Save(ctx, h, bytes.NewReader(randomData(rng, 300)), 200); err == nil {
		t.Fatal("Save with a reader longer than size succeeded")
	}
	_, err := be.Stat(ctx, h)
	assertNotExist(t, "Stat after failed Save", err)
}

// testSaveFromMidStream saves from a reader that is not at its start: the
// object is what follows the current position.
func testSaveFromMidStream(t *testing.T, be backend.Backend) {
	rng := newRNG(t)
	h := backend.Handle{Type: backend.IndexFile, Name: randomName(rng)}
	data := randomData(rng, 300)
	rd := bytes.NewReader(data)
	if _, err := rd.Seek(100, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if err := be.Save(context.Background(), h, rd, 200); err != nil {
		t.Fatalf("Save: %v", err)
	}
	sameContent(t, "Load", load(t, be, h, 0, 0), data[100:])
}

func testConcurrent(t *testing.T, be backend.Backend) {
	rng := newRNG(t)
	const workers, perWorker = 16, 4
	type obj struct {
		h    backend.Handle
		data []byte
	}
	objs := make([]obj, workers*perWorker)
	for i := range objs {
		ft := backend.PackFile
		if i%4 == 3 {
			ft = backend.IndexFile
		}
		objs[i] = obj{backend.Handle{Type: ft, Name: randomName(rng)}, randomData(rng, 1000+rng.IntN(20000))}
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(objs))
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, o := range objs[w*perWorker : (w+1)*perWorker] {
				if err := be.Save(context.Background(), o.h, bytes.NewReader(o.data), int64(len(o.data))); err != nil {
					errs <- err
					return
				}
				if _, err := loadErr(be, o.h, 0, 0); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	packs := listAll(t, be, backend.PackFile)
	index := listAll(t, be, backend.IndexFile)
	for _, o := range objs {
		list := packs
		if o.h.Type == backend.IndexFile {
			list = index
		}
		if list[o.h.Name] != int64(len(o.data)) {
			t.Errorf("List(%s)[%s] = %d, want %d", o.h.Type, o.h.Name, list[o.h.Name], len(o.data))
		}
		sameContent(t, "Load "+o.h.String(), load(t, be, o.h, 0, 0), o.data)
	}
	if len(packs)+len(index) != len(objs) {
		t.Errorf("List found %d objects, want %d", len(packs)+len(index), len(objs))
	}
}

func testLarge(t *testing.T, be backend.Backend) {
	rng := newRNG(t)
	data := randomData(rng, LargeSize)
	h := backend.Handle{Type: backend.PackFile, Name: randomName(rng)}
	save(t, be, h, data)
	fi, err := be.Stat(context.Background(), h)
	if err != nil || fi.Size != LargeSize {
		t.Fatalf("Stat = %+v, %v; want size %d", fi, err, LargeSize)
	}
	sameContent(t, "Load whole", load(t, be, h, 0, 0), data)
	// A range across the 5 MiB and 8 MiB boundaries where multipart uploads
	// split parts.
	off := int64(5<<20 - 1000)
	sameContent(t, "Load range", load(t, be, h, 4<<20, off), data[off:off+4<<20])
	sameContent(t, "Load tail", load(t, be, h, 0, LargeSize-7), data[LargeSize-7:])
}

func testCancelledContext(t *testing.T, be backend.Backend) {
	rng := newRNG(t)
	existing := backend.Handle{Type: backend.SnapshotFile, Name: randomName(rng)}
	save(t, be, existing, []byte("snapshot"))

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h := backend.Handle{Type: backend.SnapshotFile, Name: randomName(rng)}
	checks := []struct {
		op  string
		err error
	}{
		{"Save", be.Save(ctx, h, bytes.NewReader([]byte("data")), 4)},
		{"Stat", func() error { _, err := be.Stat(ctx, existing); return err }()},
		{"Load", func() error {
			rd, err := be.Load(ctx, existing, 0, 0)
			if err == nil {
				_, err = io.ReadAll(rd)
				rd.Close()
			}
			return err
		}()},
		{"List", be.List(ctx, backend.SnapshotFile, func(backend.FileInfo) error { return nil })},
		{"Remove", be.Remove(ctx, existing)},
	}
	for _, c := range checks {
		if !errors.Is(c.err, context.Canceled) {
			t.Errorf("%s with a cancelled context: error %v, want one wrapping context.Canceled", c.op, c.err)
		}
	}
	got := listAll(t, be, backend.SnapshotFile)
	if !equalMaps(got, map[string]int64{existing.Name: 8}) {
		t.Fatalf("List after cancelled operations = %v, want only %s", got, existing.Name)
	}
}

// cancellingReader cancels its context once it has handed out after bytes.
type cancellingReader struct {
	*bytes.Reader
	cancel func()
	after  int64
	read   int64
}

func (r *cancellingReader) Read(p []byte) (int, error) {
	n, err := r.Reader.Read(p)
	r.read += int64(n)
	if r.read >= r.after {
		r.cancel()
	}
	return n, err
}

func testCancelDuringSave(t *testing.T, be backend.Backend) {
	rng := newRNG(t)
	for _, size := range []int{200 << 10, LargeSize} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			data := randomData(rng, size)
			h := backend.Handle{Type: backend.PackFile, Name: randomName(rng)}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			rd := &cancellingReader{Reader: bytes.NewReader(data), cancel: cancel, after: int64(size / 3)}
			err := be.Save(ctx, h, rd, int64(size))
			if err == nil {
				// The whole body may already have been handed over before
				// the cancellation was noticed. Then the object must be
				// complete.
				sameContent(t, "Load after Save raced with cancel", load(t, be, h, 0, 0), data)
				return
			}
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Save cancelled midway: error %v, want one wrapping context.Canceled", err)
			}
			_, err = be.Stat(context.Background(), h)
			assertNotExist(t, "Stat after cancelled Save", err)
			got := listAll(t, be, backend.PackFile)
			names := make([]string, 0, len(got))
			for n := range got {
				names = append(names, n)
			}
			sort.Strings(names)
			if len(names) != 0 {
				t.Fatalf("List(data) after cancelled Save = %v", names)
			}
		})
	}
}
