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

// verifyingWriter promises to verify the digest d itself, as a bag's
// payload writer does.
type verifyingWriter struct {
	bytes.Buffer
	d ID
}

func (w *verifyingWriter) VerifiesSHA256() [32]byte { return w.d }

// TestWriteFileNodeLeavesDigestToVerifier: a file of several blobs is
// hashed as a whole only when the writer does not check the node's digest
// itself. A writer that promises to check exactly that digest gets the
// bytes without a second check (so a wrong digest passes here, for the
// writer to catch); one that promises another digest does not.
func TestWriteFileNodeLeavesDigestToVerifier(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	src := t.TempDir()
	large := randBytes(3, 3<<20)
	writeFile(t, filepath.Join(src, "large"), large, 0o644)
	sn := backupDir(t, r, src, "d")
	n, err := findNode(ctx, r, sn.Tree, "large")
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Content) < 2 {
		t.Fatalf("test data: %d blobs, want several", len(n.Content))
	}
	wrong := *n
	wrong.Digest[0] ^= 1
	other := wrong.Digest
	other[1] ^= 1
	for _, tc := range []struct {
		name     string
		promised ID
		wantErr  bool
	}{
		{"writer checks the node's digest", wrong.Digest, false},
		{"writer checks another digest", other, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &verifyingWriter{d: tc.promised}
			err := writeFileNode(ctx, r, sn, "large", &wrong, w)
			if (err != nil) != tc.wantErr {
				t.Fatalf("writeFileNode with a wrong node digest: %v, want error %v", err, tc.wantErr)
			}
			if !tc.wantErr && !bytes.Equal(w.Bytes(), large) {
				t.Fatal("the content written is not the file's")
			}
		})
	}
}
