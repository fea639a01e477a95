package local

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// directSupported probes whether dir's file system takes O_DIRECT writes.
func directSupported(t *testing.T, dir string) bool {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, "probe"), os.O_CREATE|os.O_WRONLY|syscall.O_DIRECT, 0o600)
	if err != nil {
		return false
	}
	defer func() { _ = f.Close() }()
	_, err = f.Write(alignedBuf(directAlign)[:directAlign])
	return err == nil
}

// TestDirectWriter writes objects of awkward sizes in awkward pieces and
// checks that the file holds exactly the bytes written, and that O_DIRECT
// was used wherever the file system takes it.
func TestDirectWriter(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name  string
		size  int
		piece int
	}{
		{"empty", 0, 1},
		{"one byte", 1, 1},
		{"block minus one", directAlign - 1, 1000},
		{"one block", directAlign, directAlign},
		{"block plus one", directAlign + 1, 333},
		{"buffer minus one", directBufSize - 1, 70000},
		{"one buffer", directBufSize, directBufSize},
		{"buffer plus one", directBufSize + 1, directBufSize + 1},
		{"several buffers, odd pieces", 3*directBufSize + 12345, 1<<20 + 7},
		{"one huge piece", 5*directBufSize + 3, 5*directBufSize + 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			want := make([]byte, tc.size)
			for i := range want {
				want[i] = byte(rnd.Uint32())
			}
			f, err := os.Create(filepath.Join(dir, "obj"))
			if err != nil {
				t.Fatal(err)
			}
			free := make(chan []byte, 1)
			w := newDirectWriter(f, free)
			usedDirect := w.direct
			if supported := directSupported(t, dir); usedDirect != supported {
				t.Errorf("direct I/O used: %v, file system supports it: %v", w.direct, supported)
			}
			for rest := want; len(rest) > 0; {
				n := min(tc.piece, len(rest))
				if m, err := w.Write(rest[:n]); err != nil || m != n {
					t.Fatalf("Write: %d, %v", m, err)
				}
				rest = rest[n:]
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write([]byte{1}); err == nil {
				t.Error("Write after Flush succeeded")
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(f.Name())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("file has %d bytes, want the %d written (equal prefix: %v)", len(got), len(want), bytes.HasPrefix(want, got))
			}
			if usedDirect && len(free) != 1 {
				t.Error("buffer not returned for reuse")
			}
		})
	}
}
