package metadata

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/custos-backup/custos/internal/backoff"
)

// spoolRecord is one AddDataset call waiting for etcd.
type spoolRecord struct {
	Backup  *Backup  `json:"backup"`
	Dataset *Dataset `json:"dataset"`
}

const (
	spoolExt    = ".json"
	spoolFailed = ".failed" // records etcd refused for good; kept for a person
	spoolReason = ".reason" // why the record of the same number was set aside
)

// FailedRecord is a spooled record that could never be written to the
// catalog and was set aside (as <number>.failed, with <number>.reason).
type FailedRecord struct {
	File     string    `json:"file"` // path of the .failed file
	BackupID string    `json:"backup_id,omitempty"`
	Source   string    `json:"source,omitempty"`
	Dataset  string    `json:"dataset,omitempty"`
	Reason   string    `json:"reason"`
	Time     time.Time `json:"time,omitzero"` // when it was set aside
}

// spool is a directory of records, one file per record, named by a
// sequence number so that lexical order is arrival order. Files are written
// to a temporary name, synced, renamed into place and the directory synced,
// so a crash leaves either the whole record or none.
type spool struct {
	dir     string
	onDepth func(int)

	mu     sync.Mutex
	seq    uint64
	names  []string // pending files, oldest first
	failed int      // records set aside
}

func openSpool(dir string, onDepth func(int)) (*spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("metadata: spool dir %s: %w", dir, err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("metadata: spool dir %s: %w", dir, err)
	}
	sp := &spool{dir: dir, onDepth: onDepth}
	for _, e := range ents {
		name := e.Name()
		switch {
		case strings.HasPrefix(name, ".tmp-"):
			_ = os.Remove(filepath.Join(dir, name)) // a write that never completed
		case strings.HasSuffix(name, spoolExt) || strings.HasSuffix(name, spoolFailed):
			n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSuffix(name, spoolFailed), spoolExt), 10, 64)
			if err != nil {
				continue
			}
			sp.seq = max(sp.seq, n)
			if strings.HasSuffix(name, spoolExt) {
				sp.names = append(sp.names, name)
			} else {
				sp.failed++
			}
		}
	}
	sort.Strings(sp.names)
	if onDepth != nil {
		onDepth(len(sp.names))
	}
	return sp, nil
}

func (sp *spool) depth() int {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return len(sp.names)
}

// add writes rec as the newest record.
func (sp *spool) add(rec spoolRecord) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.addLocked(rec)
}

// addIfNotEmpty spools rec only when older records are waiting, so that
// it does not overtake them.
func (sp *spool) addIfNotEmpty(rec spoolRecord) (bool, error) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if len(sp.names) == 0 {
		return false, nil
	}
	return true, sp.addLocked(rec)
}

func (sp *spool) addLocked(rec spoolRecord) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("metadata: spool backup %s: %w", rec.Backup.ID, err)
	}
	seq := sp.seq + 1
	name := fmt.Sprintf("%020d%s", seq, spoolExt)
	if err := writeFileAtomic(sp.dir, name, data); err != nil {
		return fmt.Errorf("metadata: spool backup %s dataset %s/%s: %w", rec.Backup.ID, rec.Dataset.Source, rec.Dataset.Name, err)
	}
	sp.seq = seq
	sp.names = append(sp.names, name)
	if sp.onDepth != nil {
		sp.onDepth(len(sp.names))
	}
	return nil
}

// oldest returns the oldest pending record.
func (sp *spool) oldest() (string, *spoolRecord, error) {
	sp.mu.Lock()
	if len(sp.names) == 0 {
		sp.mu.Unlock()
		return "", nil, nil
	}
	name := sp.names[0]
	sp.mu.Unlock()
	data, err := os.ReadFile(filepath.Join(sp.dir, name))
	if err != nil {
		return name, nil, fmt.Errorf("metadata: read spool file %s: %w", name, err)
	}
	var rec spoolRecord
	if err := json.Unmarshal(data, &rec); err != nil || rec.Backup == nil || rec.Dataset == nil {
		return name, nil, fmt.Errorf("%w: spool file %s is not a record: %v", ErrInvalid, name, err)
	}
	return name, &rec, nil
}

// done removes a flushed record.
func (sp *spool) done(name string) error {
	if err := os.Remove(filepath.Join(sp.dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("metadata: remove spool file %s: %w", name, err)
	}
	sp.dequeue(name, false)
	return nil
}

// setAside keeps a record that can never be written under another name,
// with the reason next to it, so that it no longer holds up the queue.
// The reason is written first: a crash in between leaves the record
// pending, to be tried (and set aside) again.
func (sp *spool) setAside(name string, reason error) error {
	base := strings.TrimSuffix(name, spoolExt)
	line := time.Now().UTC().Format(time.RFC3339) + " " + reason.Error() + "\n"
	if err := writeFileAtomic(sp.dir, base+spoolReason, []byte(line)); err != nil {
		return fmt.Errorf("metadata: set spool file %s aside: %w", name, err)
	}
	if err := os.Rename(filepath.Join(sp.dir, name), filepath.Join(sp.dir, base+spoolFailed)); err != nil {
		return fmt.Errorf("metadata: set spool file %s aside: %w", name, err)
	}
	sp.dequeue(name, true)
	return nil
}

func (sp *spool) dequeue(name string, failed bool) {
	sp.mu.Lock()
	if len(sp.names) > 0 && sp.names[0] == name {
		sp.names = sp.names[1:]
	}
	if failed {
		sp.failed++
	}
	d := len(sp.names)
	sp.mu.Unlock()
	if sp.onDepth != nil {
		sp.onDepth(d)
	}
}

func (sp *spool) failedCount() int {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.failed
}

// failedRecords lists the records set aside, oldest first.
func (sp *spool) failedRecords() ([]FailedRecord, error) {
	ents, err := os.ReadDir(sp.dir)
	if err != nil {
		return nil, fmt.Errorf("metadata: spool dir %s: %w", sp.dir, err)
	}
	var out []FailedRecord
	for _, e := range ents {
		base, ok := strings.CutSuffix(e.Name(), spoolFailed)
		if !ok {
			continue
		}
		fr := FailedRecord{File: filepath.Join(sp.dir, e.Name()), Reason: "unknown (no " + base + spoolReason + ")"}
		if b, err := os.ReadFile(filepath.Join(sp.dir, base+spoolReason)); err == nil {
			line := strings.TrimSpace(string(b))
			ts, rest, _ := strings.Cut(line, " ")
			if t, err := time.Parse(time.RFC3339, ts); err == nil {
				fr.Time, fr.Reason = t, rest
			} else {
				fr.Reason = line
			}
		}
		var rec spoolRecord
		if b, err := os.ReadFile(fr.File); err == nil && json.Unmarshal(b, &rec) == nil && rec.Backup != nil && rec.Dataset != nil {
			fr.BackupID, fr.Source, fr.Dataset = rec.Backup.ID, rec.Dataset.Source, rec.Dataset.Name
		}
		out = append(out, fr)
	}
	return out, nil
}

func writeFileAtomic(dir, name string, data []byte) error {
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// SpoolDepth is the number of records waiting in the spool for etcd.
func (s *EtcdStore) SpoolDepth() int {
	if s.spool == nil {
		return 0
	}
	return s.spool.depth()
}

// SpoolFailed is the number of records set aside because they can never
// be written (see FailedRecords).
func (s *EtcdStore) SpoolFailed() int {
	if s.spool == nil {
		return 0
	}
	return s.spool.failedCount()
}

// FailedRecords lists the spooled records that could never be written to
// the catalog, with the reason, oldest first. They stay (as
// <number>.failed and <number>.reason in the spool folder) until a person
// removes them.
func (s *EtcdStore) FailedRecords() ([]FailedRecord, error) {
	if s.spool == nil {
		return nil, nil
	}
	return s.spool.failedRecords()
}

// maxSpoolAttempts bounds how often the flusher tries one record that
// fails while etcd answers otherwise: such a record is set aside rather
// than retried forever in front of every record behind it.
const maxSpoolAttempts = 8

// permanent reports whether a write error can never pass on a retry.
func permanent(err error) bool {
	return errors.Is(err, ErrInvalid) || errors.Is(err, ErrConflict)
}

// etcdAnswers reports whether etcd answers a small read now.
func (s *EtcdStore) etcdAnswers(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, s.opts.WriteTimeout)
	defer cancel()
	_, err := s.kv.Get(ctx, s.k.backup(""), clientv3.WithCountOnly())
	return err == nil
}

// FlushSpool writes spooled records to etcd now, oldest first, and returns
// the first error. The background flusher does the same with backoff. A
// record that gets through ends the store's etcd-down state (see
// AddDataset); one that does not starts it.
func (s *EtcdStore) FlushSpool(ctx context.Context) error {
	if s.spool == nil {
		return nil
	}
	for {
		name, rec, err := s.spool.oldest()
		if err != nil {
			if errors.Is(err, ErrInvalid) {
				s.log.Error("catalog spool file is unreadable; set aside", "file", name, "err", err)
				if derr := s.spool.setAside(name, err); derr != nil {
					return derr
				}
				continue
			}
			return err
		}
		if rec == nil {
			return nil
		}
		err = s.write(ctx, rec.Backup, rec.Dataset)
		if err != nil && !permanent(err) && ctx.Err() == nil && s.etcdAnswers(ctx) {
			// etcd answers, yet this record does not pass: count it, so
			// that a record that fails for a reason not known to be
			// permanent does not block the queue for good either.
			s.attemptsMu.Lock()
			s.attempts[name]++
			n := s.attempts[name]
			s.attemptsMu.Unlock()
			if n >= maxSpoolAttempts {
				err = fmt.Errorf("%w: failed %d times while etcd answered: %w", ErrInvalid, n, err)
			}
		}
		if err != nil {
			if !permanent(err) {
				if ctx.Err() == nil {
					s.markDown(err)
				}
				return err
			}
			// Retrying can never succeed; keep the record for a person
			// rather than block every later record behind it.
			s.log.Error("catalog refused a spooled record for good; set aside", "file", filepath.Join(s.opts.SpoolDir, name),
				"backup", rec.Backup.ID, "dataset", rec.Dataset.Source+"/"+rec.Dataset.Name, "err", err)
			if derr := s.spool.setAside(name, err); derr != nil {
				return derr
			}
			s.forgetAttempts(name)
			if s.opts.OnSetAside != nil {
				s.opts.OnSetAside(FailedRecord{File: filepath.Join(s.opts.SpoolDir, name), BackupID: rec.Backup.ID,
					Source: rec.Dataset.Source, Dataset: rec.Dataset.Name, Reason: err.Error(), Time: time.Now()})
			}
			continue
		}
		// etcd took a record: new records may try it directly again,
		// though they queue behind the spool while it is not empty.
		s.markUp()
		s.forgetAttempts(name)
		if err := s.spool.done(name); err != nil {
			return err
		}
		s.log.Info("flushed spooled catalog record", "backup", rec.Backup.ID, "dataset", rec.Dataset.Source+"/"+rec.Dataset.Name)
	}
}

func (s *EtcdStore) forgetAttempts(name string) {
	s.attemptsMu.Lock()
	delete(s.attempts, name)
	s.attemptsMu.Unlock()
}

func (s *EtcdStore) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// flushLoop retries the spool with exponential backoff (internal/backoff)
// until Close. A kick while etcd is down does not shorten the backoff.
func (s *EtcdStore) flushLoop() {
	defer s.wg.Done()
	// Jittered down by up to half, so that agents sharing an etcd that
	// comes back do not all flush at once.
	policy := backoff.Policy{Initial: s.opts.MinBackoff, Max: s.opts.MaxBackoff, Jitter: 0.5}
	for {
		select {
		case <-s.runCtx.Done():
			return
		case <-s.kick:
		}
		for failures := 1; s.spool.depth() > 0; failures++ {
			err := s.FlushSpool(s.runCtx)
			if err == nil {
				break
			}
			if s.runCtx.Err() != nil {
				return
			}
			delay := policy.Delay(failures)
			s.log.Warn("catalog spool flush failed; will retry", "depth", s.spool.depth(), "retry_in", delay, "err", err)
			if backoff.Sleep(s.runCtx, delay) != nil {
				return
			}
		}
	}
}
