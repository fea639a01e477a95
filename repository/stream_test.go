package repository

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"
)

// TestBackupStreamProgress checks that a stream backup reports the bytes
// read so far while the stream is still open (a database dump that runs
// for an hour must not show 0 bytes), and the totals at the end.
func TestBackupStreamProgress(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	first := randBytes(31, 3*int(r.cfg.MaxChunk))
	rest := randBytes(32, 1<<20)
	total := int64(len(first) + len(rest))

	var (
		mu      sync.Mutex
		reports []Progress
	)
	// The reader pauses after first until the test has seen progress.
	seen := make(chan struct{})
	var seenOnce sync.Once
	progress := func(p Progress) {
		mu.Lock()
		reports = append(reports, p)
		mu.Unlock()
		if p.Bytes >= int64(r.cfg.MaxChunk) && p.Bytes < total {
			seenOnce.Do(func() { close(seen) })
		}
	}
	pr, pw := io.Pipe()
	writerDone := make(chan error, 1)
	go func() {
		if _, err := pw.Write(first); err != nil {
			writerDone <- err
			return
		}
		select {
		case <-seen:
		case <-time.After(2 * time.Minute): // a hang guard, not a speed test
		}
		_, err := pw.Write(rest)
		writerDone <- pw.CloseWithError(err)
	}()
	sn, err := r.BackupStream(ctx, "db.dump", pr, BackupOptions{Dataset: "db", Progress: progress})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	select {
	case <-seen:
	default:
		t.Fatal("no progress was reported while the stream was open")
	}
	mu.Lock()
	defer mu.Unlock()
	var last Progress
	for _, p := range reports {
		if p.Bytes < last.Bytes || p.Files < last.Files {
			t.Errorf("progress went backwards: %+v after %+v", p, last)
		}
		if p.Current != "db.dump" {
			t.Errorf("progress names %q, want the stream", p.Current)
		}
		if p.Bytes < total && p.Files != 0 {
			t.Errorf("the stream counted as a file before it was complete: %+v", p)
		}
		last = p
	}
	if last.Bytes != total || last.Files != 1 {
		t.Errorf("final progress %+v, want %d bytes and 1 file", last, total)
	}
	if sn.Summary.Bytes != total || sn.Summary.Files != 1 {
		t.Errorf("summary %+v", sn.Summary)
	}
}
