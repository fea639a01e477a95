package repository

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"syscall"
	"testing"
	"time"

	"github.com/custos-backup/custos/repository/backend/local"
	"github.com/custos-backup/custos/repository/format"
	"github.com/restic/chunker"
)

// benchText is log-like text with varying fields (compresses about 4:1,
// like the bench dataset's logs).
func benchText(n int) []byte {
	rng := rand.New(rand.NewPCG(1, 2))
	var b bytes.Buffer
	levels := []string{"INFO", "WARN", "DEBUG", "ERROR"}
	for b.Len() < n {
		fmt.Fprintf(&b, "2024-03-01T12:%02d:%02d.%06dZ %s request handled path=/api/v1/items/%d status=%d bytes=%d user=u%04d duration_ms=%d trace=%016x\n",
			rng.IntN(60), rng.IntN(60), rng.IntN(1000000), levels[rng.IntN(4)], rng.IntN(100000), 200+rng.IntN(4)*100, rng.IntN(1<<20), rng.IntN(5000), rng.IntN(900), rng.Uint64())
	}
	return b.Bytes()[:n]
}

func BenchmarkChunk(b *testing.B) {
	data := randBytes(1, 64<<20)
	pol, _ := chunker.RandomPolynomial()
	buf := make([]byte, 0, chunker.MaxSize)
	ch := chunker.New(bytes.NewReader(data), pol)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		ch.Reset(bytes.NewReader(data), pol)
		for {
			if _, err := ch.Next(buf); err == io.EOF {
				break
			}
		}
	}
}

func BenchmarkHash(b *testing.B) {
	data := randBytes(2, 1<<20)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		sha256.Sum256(data)
	}
}

func BenchmarkCompress(b *testing.B) {
	r := fuzzRepo()
	for _, tc := range []struct {
		name string
		data []byte
	}{{"text", benchText(1 << 20)}, {"random", randBytes(3, 1<<20)}} {
		b.Run(tc.name, func(b *testing.B) {
			enc := r.getEncoder()
			out := make([]byte, 0, 2<<20)
			b.SetBytes(int64(len(tc.data)))
			var n int
			for b.Loop() {
				n = len(enc.EncodeAll(tc.data, out[:0]))
			}
			b.ReportMetric(float64(n)/float64(len(tc.data)), "ratio")
		})
	}
	b.Run("entropy-check", func(b *testing.B) {
		data := randBytes(3, 1<<20)
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if compressible(data) {
				b.Fatal("random data judged compressible")
			}
		}
	})
}

func BenchmarkEncrypt(b *testing.B) {
	s, _ := format.NewSealer(randBytes(4, format.KeySize))
	data := randBytes(5, 1<<20)
	buf := make([]byte, format.NonceSize+len(data), format.NonceSize+len(data)+format.TagSize)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		copy(buf[format.NonceSize:], data)
		s.SealInPlace(buf[:format.NonceSize+len(data)])
	}
}

// BenchmarkPipeline backs up ~64 MiB of random data plus 16 MiB of log text
// (8 files) into a fresh local repository per iteration: read, chunk, hash,
// compress, encrypt, pack, hash packs, write.
func BenchmarkPipeline(b *testing.B) {
	src := b.TempDir()
	var total int64
	for i := range 8 {
		d := randBytes(uint64(10+i), 8<<20)
		writeFile(b, filepath.Join(src, "r", string(rune('a'+i))), d, 0o644)
		total += int64(len(d))
	}
	txt := benchText(16 << 20)
	writeFile(b, filepath.Join(src, "log.txt"), txt, 0o644)
	total += int64(len(txt))
	b.SetBytes(total)
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		r, _ := newTestRepo(b, false)
		b.StartTimer()
		sn, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(sn.Summary.BytesAdded)/float64(total), "stored/logical")
	}
}

// BenchmarkBackupDataset runs the project's benchmark steps on the dataset
// in $CUSTOS_BENCH_DATA (see /work/shared/bench): first backup, backup with
// nothing changed, full restore. It reports repository size too.
func BenchmarkBackupDataset(b *testing.B) {
	data := os.Getenv("CUSTOS_BENCH_DATA")
	if data == "" {
		b.Skip("CUSTOS_BENCH_DATA not set")
	}
	ctx := context.Background()
	repoDir := filepath.Join(b.TempDir(), "repo")
	if d := os.Getenv("CUSTOS_BENCH_REPO"); d != "" {
		repoDir = d
		_ = os.RemoveAll(repoDir)
	}
	be, err := local.Create(ctx, repoDir)
	if err != nil {
		b.Fatal(err)
	}
	r, err := Init(ctx, be, InitOptions{Password: testPassword})
	if err != nil {
		b.Fatal(err)
	}
	var sn *Snapshot
	b.Run("first", func(b *testing.B) {
		stop := sampleHeap(b)
		defer stop()
		for b.Loop() {
			sn, err = r.Backup(ctx, data, nil, BackupOptions{Dataset: "bench", Host: "h", NoParent: true})
			if err != nil {
				b.Fatal(err)
			}
		}
		b.SetBytes(sn.Summary.Bytes)
		b.ReportMetric(float64(dirSize(repoDir))/(1<<20), "repoMiB")
	})
	b.Run("nochange", func(b *testing.B) {
		for b.Loop() {
			r2, err := Open(ctx, be, testPassword)
			if err != nil {
				b.Fatal(err)
			}
			s2, err := r2.Backup(ctx, data, nil, BackupOptions{Dataset: "bench", Host: "h"})
			if err != nil {
				b.Fatal(err)
			}
			if s2.Summary.BytesRead != 0 {
				b.Fatalf("no-change backup read %d bytes", s2.Summary.BytesRead)
			}
		}
	})
	b.Run("restore", func(b *testing.B) {
		target := filepath.Join(b.TempDir(), "restore")
		for b.Loop() {
			_ = os.RemoveAll(target)
			if _, err := r.Restore(ctx, sn, target, RestoreOptions{}); err != nil {
				b.Fatal(err)
			}
		}
		b.SetBytes(sn.Summary.Bytes)
	})
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	b.ReportMetric(float64(ru.Maxrss)/1024, "peakRSS-MiB")
}

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// sampleHeap reports the peak heap in use while a benchmark runs.
func sampleHeap(b *testing.B) (stop func()) {
	done := make(chan struct{})
	peak := make(chan uint64)
	go func() {
		var m runtime.MemStats
		var p uint64
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			runtime.ReadMemStats(&m)
			if m.HeapInuse > p+8<<20 && os.Getenv("CUSTOS_HEAP_PROFILE") != "" {
				if f, err := os.Create(os.Getenv("CUSTOS_HEAP_PROFILE")); err == nil {
					runtime.GC()
					_ = pprof.Lookup("heap").WriteTo(f, 0)
					_ = f.Close()
				}
			}
			p = max(p, m.HeapInuse)
			select {
			case <-done:
				peak <- p
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		close(done)
		b.ReportMetric(float64(<-peak)/(1<<20), "peakHeapMiB")
	}
}
