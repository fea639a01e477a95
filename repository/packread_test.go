package repository

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/format"
)

// countLoads counts the pack loads that reach the backend.
type countLoads struct {
	backend.Backend
	n atomic.Int64
}

func (c *countLoads) Load(ctx context.Context, h backend.Handle, length int, offset int64) (io.ReadCloser, error) {
	if h.Type == backend.PackFile {
		c.n.Add(1)
	}
	return c.Backend.Load(ctx, h, length, offset)
}

// TestPackReader reads blobs of one pack, one of them damaged, given in
// reverse order: adjacent blobs must come with one request, the good
// ones verified and in their callers' positions, the damaged one as an
// error naming pack and blob.
func TestPackReader(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	var pb packBuilder
	var plain [][]byte
	for i := range 4 {
		data := randBytes(uint64(200+i), 3000+i)
		plain = append(plain, data)
		if err := pb.add(DataBlob, format.HashID(data), 0, len(data), r.seal.Seal(nil, data)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pb.finish(r.seal, time.Now()); err != nil {
		t.Fatal(err)
	}
	const bad = 2
	pb.buf[pb.blobs[bad].Offset+10] ^= 1
	pack := format.HashID(pb.buf)
	if err := saveBytes(ctx, r.be, backend.Handle{Type: backend.PackFile, Name: pack.String()}, pb.buf); err != nil {
		t.Fatal(err)
	}
	cl := &countLoads{Backend: r.be}

	entries := []format.PackedBlob{pb.blobs[3], pb.blobs[2], pb.blobs[1], pb.blobs[0]}
	for _, keep := range []bool{false, true} {
		cl.n.Store(0)
		pr := packReader{be: cl, opener: r, keepSealed: keep}
		seen := map[int]bool{}
		err := pr.read(ctx, pack, entries, func(b readBlob) error {
			seen[b.Index] = true
			want := 3 - b.Index // entries are reversed
			if want == bad {
				var be *BlobError
				if !errors.As(b.Err, &be) || be.Pack != pack || be.Blob != pb.blobs[bad].ID {
					t.Errorf("damaged blob: got error %v, want a BlobError naming pack and blob", b.Err)
				} else if msg := b.Err.Error(); !strings.Contains(msg, pack.String()) || !strings.Contains(msg, pb.blobs[bad].ID.String()) {
					t.Errorf("error %q does not name pack and blob", msg)
				}
				return nil
			}
			if b.Err != nil || !bytes.Equal(b.Plain, plain[want]) {
				t.Errorf("blob %d: err %v, plaintext equal %v", want, b.Err, bytes.Equal(b.Plain, plain[want]))
			}
			if keep && !bytes.Equal(b.Sealed, pb.buf[b.Entry.Offset:b.Entry.Offset+b.Entry.Length]) {
				t.Errorf("blob %d: sealed bytes differ from the pack's", want)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(seen) != len(entries) {
			t.Errorf("keepSealed %v: %d of %d blobs reached the callback", keep, len(seen), len(entries))
		}
		if n := cl.n.Load(); n != 1 {
			t.Errorf("keepSealed %v: %d loads for adjacent blobs, want 1", keep, n)
		}
	}
}
