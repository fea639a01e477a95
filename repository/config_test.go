package repository

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/custos-backup/custos/repository/format"
)

// TestChunkAvgBits pins the chunk size settings: new repositories record
// chunk_avg_bits, older configs without it keep restic's 2^20, and values
// out of range are refused.
func TestChunkAvgBits(t *testing.T) {
	c, err := format.NewRepoConfig(0, false, "")
	if err != nil {
		t.Fatal(err)
	}
	if c.AvgBits != format.DefaultAvgBits || c.MinChunk != format.DefaultMinChunk || c.AverageBits() != 19 {
		t.Fatalf("new config: avg bits %d, min %d", c.AvgBits, c.MinChunk)
	}
	for _, tc := range []struct {
		bits    int
		want    int // avgBits(); 0: invalid
		wantErr string
	}{
		{0, 20, ""},
		{16, 16, ""},
		{24, 24, ""},
		{15, 0, "chunk_avg_bits"},
		{25, 0, "chunk_avg_bits"},
	} {
		c2 := *c
		c2.AvgBits = tc.bits
		err := c2.Validate()
		switch {
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("bits %d: error %v, want one naming %s", tc.bits, err, tc.wantErr)
		case tc.wantErr == "" && err != nil:
			t.Errorf("bits %d: %v", tc.bits, err)
		case tc.wantErr == "" && c2.AverageBits() != tc.want:
			t.Errorf("bits %d: avgBits() = %d, want %d", tc.bits, c2.AverageBits(), tc.want)
		}
	}
}

// TestChunkSizesFollowConfig backs up one large file and checks that the
// chunks respect the configured bounds and that the average moves with
// chunk_avg_bits.
func TestChunkSizesFollowConfig(t *testing.T) {
	ctx := context.Background()
	data := randBytes(77, 24<<20)
	avg := map[int]float64{}
	for _, bits := range []int{17, 20} {
		r, _ := newTestRepo(t, true)
		r.cfg.AvgBits = bits
		src := t.TempDir()
		writeFile(t, src+"/big.bin", data, 0o644)
		sn, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "d"})
		if err != nil {
			t.Fatal(err)
		}
		tr, err := r.loadTree(ctx, sn.Tree)
		if err != nil {
			t.Fatal(err)
		}
		n := tr.Find("big.bin")
		var total int
		for i, id := range n.Content {
			_, pb, ok := r.index().Lookup(format.DataHandle(id))
			if !ok {
				t.Fatalf("chunk %d not indexed", i)
			}
			size := int(pb.RawLength)
			if last := i == len(n.Content)-1; (!last && size < int(r.cfg.MinChunk)) || size > int(r.cfg.MaxChunk) {
				t.Errorf("bits %d: chunk %d has %d bytes, outside [%d, %d]", bits, i, size, r.cfg.MinChunk, r.cfg.MaxChunk)
			}
			total += size
		}
		if total != len(data) {
			t.Fatalf("chunks add up to %d bytes, want %d", total, len(data))
		}
		avg[bits] = float64(total) / float64(len(n.Content))
		var out bytes.Buffer
		if err := r.RestoreFile(ctx, sn, "big.bin", &out); err != nil || !bytes.Equal(out.Bytes(), data) {
			t.Fatalf("bits %d: restore differs (%v)", bits, err)
		}
	}
	// Expected about min + 2^bits: 384 KiB and 1.25 MiB.
	if avg[17] > 0.6*avg[20] {
		t.Errorf("average chunk %0.f bytes with 2^17, %0.f with 2^20: the setting has no effect", avg[17], avg[20])
	}
}
