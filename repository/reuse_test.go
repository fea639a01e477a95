package repository

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/custos-backup/custos/repository/format"
)

// TestBackupReusesUnchangedChunks changes a large file in many ways after
// a first backup. The next backup (with that parent) must store exactly the
// content a backup without a parent stores, restore it byte-exact, and
// recognise every unchanged leading chunk of the parent's without the
// chunker (and no chunk after the first change).
func TestBackupReusesUnchangedChunks(t *testing.T) {
	ctx := context.Background()
	base := randBytes(7, 12<<20)
	for _, tc := range []struct {
		name    string
		edit    func(b []byte, cuts []int) []byte // cuts: the old chunks' end offsets
		chunked bool                              // the new file is larger than chunk_min
	}{
		{"append much", func(b []byte, _ []int) []byte { return append(b, randBytes(8, 3<<20)...) }, true},
		{"append a little", func(b []byte, _ []int) []byte { return append(b, "tail"...) }, true},
		{"only touched", func(b []byte, _ []int) []byte { return b }, true},
		{"first byte", func(b []byte, _ []int) []byte { b[0] ^= 1; return b }, true},
		{"middle byte", func(b []byte, _ []int) []byte { b[6<<20] ^= 1; return b }, true},
		{"last byte", func(b []byte, _ []int) []byte { b[len(b)-1] ^= 1; return b }, true},
		{"inserted in the middle", func(b []byte, _ []int) []byte {
			return slices.Insert(b, 5<<20, randBytes(9, 100)...)
		}, true},
		{"truncated at a cut", func(b []byte, cuts []int) []byte { return b[:cuts[3]] }, true},
		{"truncated within a chunk", func(b []byte, cuts []int) []byte { return b[:cuts[3]+1000] }, true},
		{"truncated below chunk_min", func(b []byte, _ []int) []byte { return b[:1000] }, false},
		{"replaced", func(b []byte, _ []int) []byte { return randBytes(10, len(b)) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := newTestRepo(t, false)
			src := t.TempDir()
			p := filepath.Join(src, "big.bin")
			writeFile(t, p, slices.Clone(base), 0o644)
			sn1 := backupDir(t, r, src, "d")
			old, err := findNode(ctx, r, sn1.Tree, "big.bin")
			if err != nil {
				t.Fatal(err)
			}
			var cuts []int
			end := 0
			for _, id := range old.Content {
				_, pb, ok := r.index().Lookup(format.DataHandle(id))
				if !ok {
					t.Fatalf("blob %s of the first backup not in the index", id.Short())
				}
				end += int(pb.RawLength)
				cuts = append(cuts, end)
			}
			if len(cuts) < 6 || end != len(base) {
				t.Fatalf("first backup cut %d bytes into %d chunks; want %d bytes in 6 or more", end, len(cuts), len(base))
			}

			data := tc.edit(slices.Clone(base), cuts)
			writeFile(t, p, data, 0o644)
			later := time.Now().Add(time.Hour)
			if err := os.Chtimes(p, later, later); err != nil {
				t.Fatal(err)
			}
			changed := -1
			for i, c := range cuts {
				start := 0
				if i > 0 {
					start = cuts[i-1]
				}
				if c > len(data) || !bytes.Equal(data[start:c], base[start:c]) {
					changed = i
					break
				}
			}
			got := -1
			r.testHookReuse = func(path string, reused int) {
				if path == p {
					got = reused
				}
			}
			sn2, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "d", Host: "test"})
			if err != nil {
				t.Fatal(err)
			}
			r.testHookReuse = nil
			if sn2.Parent == nil || *sn2.Parent != sn1.ID {
				t.Fatalf("second backup's parent %v, want %s", sn2.Parent, sn1.ID.Short())
			}
			// Every old chunk before the first change, but never the old
			// last one (its end was the file's end, not a cut).
			want := len(cuts) - 1
			if changed >= 0 {
				want = min(changed, want)
			}
			if !tc.chunked {
				want = -1 // one blob, no chunker
			}
			if got != want {
				t.Errorf("reused %d of the parent's %d chunks (first change in chunk %d), want %d", got, len(cuts), changed, want)
			}

			fresh, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "d", Host: "test", NoParent: true})
			if err != nil {
				t.Fatal(err)
			}
			n2, err := findNode(ctx, r, sn2.Tree, "big.bin")
			if err != nil {
				t.Fatal(err)
			}
			nf, err := findNode(ctx, r, fresh.Tree, "big.bin")
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(n2.Content, nf.Content) || n2.Digest != nf.Digest || n2.Size != uint64(len(data)) {
				t.Fatalf("with parent: %d chunks, digest %s, size %d; without: %d chunks, digest %s (want the same, size %d)",
					len(n2.Content), n2.Digest.Short(), n2.Size, len(nf.Content), nf.Digest.Short(), len(data))
			}
			var out bytes.Buffer
			if err := r.RestoreFile(ctx, sn2, "big.bin", &out); err != nil {
				t.Fatal(err)
			}
			mustEqual(t, out.Bytes(), data, "big.bin")
		})
	}
}
