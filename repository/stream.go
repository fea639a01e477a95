package repository

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/custos-backup/custos/repository/format"
)

// BackupStream stores rd as one regular file called name at the top of the
// tree. If rd returns an error, nothing is recorded and the error is
// returned.
func (r *Repository) BackupStream(ctx context.Context, name string, rd io.Reader, opts BackupOptions) (*Snapshot, error) {
	start := time.Now()
	if err := format.CheckName(name); err != nil {
		return nil, fmt.Errorf("backup stream: %w", err)
	}
	var parent *Snapshot
	w, err := r.beginWrite(ctx, true, func(ctx context.Context) (err error) {
		parent, err = r.findParent(ctx, &opts)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("backup stream %q: %w", name, err)
	}
	defer w.end()
	w.commitAsYouGo = true

	w.start()
	saver := w.saver
	b := &backupState{r: r, ctx: w.ctx, saver: saver, bufs: w.bufs, opts: &opts}
	for _, msg := range r.indexDamageWarnings() {
		b.warn("%s", msg)
	}

	n := format.Node{Name: name, Type: format.NodeFile, Mode: 0o600, UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Links: 1}
	// Progress as in Backup: bytes read so far, the stream as the current
	// file; it counts as a file once it is complete.
	b.current.Store(&n.Name)
	stopProgress := b.startProgress()
	defer func() { stopProgress() }() // a no-op once stopped below
	readErr := func() error {
		ch := r.cfg.NewChunker(rd)
		buf := make([]byte, 0, r.cfg.MaxChunk)
		digest := sha256.New()
		for {
			data, err := ch.Next(buf[:0])
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("read %q: %w", name, err)
			}
			digest.Write(data)
			id := ID(sha256.Sum256(data))
			n.Content = append(n.Content, id)
			n.Size += uint64(len(data))
			b.bytesRead.Add(int64(len(data)))
			b.bytes.Add(int64(len(data)))
			if !r.index().Has(format.DataHandle(id)) {
				full, pb := saver.newBuf(len(data))
				copy(pb, data)
				if _, err := saver.save(DataBlob, id, full, len(data)); err != nil {
					return err
				}
			}
		}
		copy(n.Digest[:], digest.Sum(nil))
		return nil
	}()
	var rootID ID
	if readErr == nil {
		now := time.Now()
		n.MTime, n.CTime = now.UnixNano(), now.UnixNano()
		rootID, readErr = saver.saveCopy(TreeBlob, format.EncodeTree(&format.Tree{Nodes: []format.Node{n}}))
	}
	if readErr != nil {
		// Stop the pipeline; whatever packs were uploaded stay unreferenced
		// (no index, no snapshot) and are removed by prune.
		w.stop(readErr)
	}
	packs, err := w.flush()
	if readErr == nil && err == nil {
		b.nFiles.Store(1)
	}
	stopProgress()
	stopProgress = func() {}
	if readErr != nil {
		return nil, fmt.Errorf("backup stream %q: %w", name, readErr)
	}
	if err != nil {
		return nil, fmt.Errorf("backup stream %q: %w", name, err)
	}
	if err := w.commitPacks(packs); err != nil {
		return nil, fmt.Errorf("backup stream %q: %w", name, err)
	}
	b.nNew.Store(1)
	b.bytes.Store(int64(n.Size))
	sn := b.snapshot(opts, rootID, start)
	if parent != nil {
		pid := parent.ID
		sn.Parent = &pid
	}
	if err := w.saveSnapshot(sn); err != nil {
		return nil, fmt.Errorf("backup stream %q: %w", name, err)
	}
	return sn, nil
}
