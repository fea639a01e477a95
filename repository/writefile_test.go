package repository

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// TestWriteFileNodeDigest streams files of one and of several blobs from a
// real repository and checks the file digest: a file whose recorded digest
// is not its content's fails, whichever way its content is verified (one
// blob: against the blob id, which loading checks; several: the whole).
func TestWriteFileNodeDigest(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	src := t.TempDir()
	small := randBytes(1, 10<<10)
	large := randBytes(2, 3<<20)
	writeFile(t, filepath.Join(src, "small"), small, 0o644)
	writeFile(t, filepath.Join(src, "large"), large, 0o644)
	sn := backupDir(t, r, src, "d")
	for _, tc := range []struct {
		name  string
		want  []byte
		blobs int
	}{
		{"small", small, 1},
		{"large", large, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := findNode(ctx, r, sn.Tree, tc.name)
			if err != nil {
				t.Fatal(err)
			}
			if len(n.Content) < tc.blobs {
				t.Fatalf("test data: %d blobs, want at least %d", len(n.Content), tc.blobs)
			}
			var out bytes.Buffer
			if err := writeFileNode(ctx, r, sn, tc.name, n, &out); err != nil || !bytes.Equal(out.Bytes(), tc.want) {
				t.Fatalf("restore: %v (%d bytes, want %d)", err, out.Len(), len(tc.want))
			}
			wrong := *n
			wrong.Digest[0] ^= 1
			out.Reset()
			err = writeFileNode(ctx, r, sn, tc.name, &wrong, &out)
			if err == nil || !strings.Contains(err.Error(), "does not match the file digest") {
				t.Fatalf("a node whose digest is not its content's: %v", err)
			}
		})
	}
}
