package repository

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"sync"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/format"
	"github.com/custos-backup/custos/repository/index"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"
)

// Fixity: the pieces a scheduler needs to prove, pack by pack, that a
// repository is intact, and to repair it from another repository. The
// scheduler (agent) chooses which packs a run reads and keeps the evidence;
// this file reads, judges and heals.

// PackInfo is one indexed pack.
type PackInfo = index.Pack

// Packs lists the packs the index lists, after bringing the index up to
// date. Packs no index lists (crash leftovers, packs a heal retired) are
// not there: nothing reads them, and prune deletes them.
func (r *Repository) Packs(ctx context.Context) ([]PackInfo, error) {
	if err := r.refreshIndex(ctx, false); err != nil {
		return nil, fmt.Errorf("list packs: %w", err)
	}
	return r.index().Packs(), nil
}

// PackVerdict is the outcome of verifying one pack.
type PackVerdict struct {
	Pack      ID       `json:"pack"`
	Size      int64    `json:"size"`
	BytesRead int64    `json:"bytes_read"`
	OK        bool     `json:"ok"`
	Err       string   `json:"error,omitempty"`
	Blobs     []string `json:"damaged_blobs,omitempty"` // damaged blob ids
	Snapshots []string `json:"snapshots,omitempty"`     // snapshots that need a damaged blob
	Paths     []string `json:"paths,omitempty"`         // "snapshotShortID:path" of files that need one
	// Reread is true when the first read found damage, so the pack was
	// read a second time; OK then says what the second read found.
	Reread bool `json:"reread,omitempty"`
}

// VerifyPacks reads each pack whole and verifies it as check --read-data
// does: its SHA-256 against its name, its header against the index, every
// blob against its id. A pack found damaged is read once more, so that a
// passing network error is not reported as damage; only what the second
// read confirms is. The verdict of a damaged pack names the snapshots and
// file paths that depend on it.
//
// It returns an error only when it could not judge (the backend failed to
// list, ctx ended); damage is in the verdicts.
func (r *Repository) VerifyPacks(ctx context.Context, packs []ID) ([]PackVerdict, error) {
	_, verdicts, err := r.verifyPackSet(ctx, packs)
	if err != nil {
		return nil, err
	}
	var again []ID
	for _, v := range verdicts {
		if !v.OK {
			again = append(again, v.Pack)
		}
	}
	if len(again) == 0 {
		return verdicts, nil
	}
	c, second, err := r.verifyPackSet(ctx, again)
	if err != nil {
		return nil, err
	}
	if len(c.damagedBlobs) > 0 {
		snaps, err := c.checkSnapshots(ctx)
		if err != nil {
			return nil, err
		}
		if err := c.findDependents(ctx, snaps); err != nil {
			return nil, err
		}
	}
	byID := make(map[ID]PackVerdict, len(second))
	for _, v := range second {
		v.Reread = true
		if p := c.problems[packPath(v.Pack)]; p != nil {
			v.Blobs = slices.Clone(p.Blobs)
			sort.Strings(v.Blobs)
			v.Snapshots = slices.Clone(p.Snapshots)
			v.Paths = slices.Clone(p.Paths)
		}
		byID[v.Pack] = v
	}
	for i, v := range verdicts {
		if s, ok := byID[v.Pack]; ok {
			verdicts[i] = s
		}
	}
	return verdicts, nil
}

// verifyPackSet reads packs once with a fresh view of the index.
func (r *Repository) verifyPackSet(ctx context.Context, packs []ID) (*checkState, []PackVerdict, error) {
	ctx = backend.Uncached(ctx) // the index files are checked too: as stored
	c := newCheckState(r.checkSource())
	if err := c.checkIndexAndPacks(ctx); err != nil {
		return nil, nil, err
	}
	// The stored packs are read as check reads them: several at once.
	var read []ID
	for _, id := range packs {
		if _, stored := c.stored[id]; stored {
			read = append(read, id)
		}
	}
	var mu sync.Mutex
	bytesRead := make(map[ID]int64, len(read))
	err := c.readPackList(ctx, read, func(id ID, n int64) {
		mu.Lock()
		bytesRead[id] = n
		mu.Unlock()
	})
	if err != nil {
		return nil, nil, fmt.Errorf("verify: %w", err)
	}
	out := make([]PackVerdict, 0, len(packs))
	for _, id := range packs {
		pp := packPath(id)
		v := PackVerdict{Pack: id, Size: c.packs[id]}
		if _, stored := c.stored[id]; !stored {
			c.problem(pp, "pack is missing from the backend")
			for _, pb := range c.packBlobs[id] {
				c.damageBlob(pp, pb.Handle())
			}
		} else {
			v.BytesRead = bytesRead[id]
		}
		if p := c.problems[pp]; p != nil {
			v.Err = p.Err
			v.Blobs = slices.Clone(p.Blobs)
		} else {
			v.OK = true
		}
		out = append(out, v)
	}
	return c, out, nil
}

// DigestProblem is a file whose content does not hash to the whole-file
// SHA-256 recorded when it was ingested, or cannot be read.
type DigestProblem struct {
	Snapshot string `json:"snapshot"`
	Path     string `json:"path"`
	Err      string `json:"error"`
}

// DigestStats counts what VerifyDigests read.
type DigestStats struct {
	Files    int64           `json:"files"`
	Bytes    int64           `json:"bytes"`
	Problems []DigestProblem `json:"problems"`
}

// VerifyDigests re-derives the whole-file SHA-256 of every regular file
// of snaps from its blobs and compares it with the digest recorded at
// ingest (the tree node's Digest). This is the auditor's question: is the
// file as it was ingested, not only is each pack what it was written as.
// Files written without a digest are counted but not compared. Problems
// come in the order of the snapshots and, within one, of the walk.
func (r *Repository) VerifyDigests(ctx context.Context, snaps []*Snapshot) (*DigestStats, error) {
	st := &DigestStats{Problems: []DigestProblem{}}
	for _, sn := range snaps {
		if err := r.verifySnapshotDigests(ctx, sn, st); err != nil {
			return st, err
		}
	}
	return st, nil
}

// verifySnapshotDigests verifies the files of sn. A file of one blob has
// that blob's id as its digest (FORMAT.md), so the pack reader's check of
// the blob against its id is its whole verification: those blobs are read
// by pack, nearby ones with one request, several packs at once. Larger
// files are hashed in order, a few runs of each read ahead, several files
// at once (as many as the repository keeps requests in flight: on remote
// storage each read waits a round trip).
func (r *Repository) verifySnapshotDigests(ctx context.Context, sn *Snapshot, st *DigestStats) error {
	type found struct {
		seq int
		DigestProblem
	}
	type fileRef struct {
		seq    int
		path   string
		digest ID
	}
	var (
		mu       sync.Mutex
		problems []found
		seq      int
		single   = map[ID][]fileRef{} // one-blob files by their blob
		want     = map[ID][]format.PackedBlob{}
	)
	problem := func(seq int, p, what string) {
		problems = append(problems, found{seq, DigestProblem{Snapshot: sn.ID.String(), Path: p, Err: what}})
	}
	workers := r.readers(runtime.GOMAXPROCS(0))
	mem := semaphore.NewWeighted(digestBytes)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	walkErr := r.walkWholeTreeAt(gctx, "", sn.Tree, func(p string, n *format.Node) error {
		if n.Type != format.NodeFile {
			return nil
		}
		seq++
		i := seq
		if len(n.Content) == 1 {
			id := n.Content[0]
			if single[id] == nil {
				pack, pb, ok := r.index().Lookup(format.DataHandle(id))
				if !ok {
					mu.Lock()
					st.Files++
					problem(i, p, notInIndex(DataBlob, id).Error())
					mu.Unlock()
					return nil
				}
				want[pack] = append(want[pack], pb)
			}
			single[id] = append(single[id], fileRef{i, p, n.Digest})
			return nil
		}
		g.Go(func() error {
			read, what := r.verifyFileDigest(gctx, n, mem)
			if gctx.Err() != nil {
				return gctx.Err()
			}
			mu.Lock()
			defer mu.Unlock()
			st.Files++
			st.Bytes += read
			if what != "" {
				problem(i, p, what)
			}
			return nil
		})
		return nil
	})
	err := g.Wait()
	if err == nil && walkErr == nil {
		err = readPackSet(ctx, r, want, workers, func(_ ID, b readBlob) error {
			mu.Lock()
			defer mu.Unlock()
			for _, f := range single[b.Entry.ID] {
				st.Files++
				switch {
				case b.Err != nil:
					problem(f.seq, f.path, b.Err.Error())
				case !f.digest.IsNull() && f.digest != b.Entry.ID:
					st.Bytes += int64(len(b.Plain))
					problem(f.seq, f.path, fmt.Sprintf("content SHA-256 %s differs from the %s recorded at ingest", b.Entry.ID.Short(), f.digest.Short()))
				default:
					st.Bytes += int64(len(b.Plain))
				}
			}
			return nil
		})
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err == nil && walkErr != nil {
		problem(seq+1, "/", walkErr.Error())
	}
	slices.SortFunc(problems, func(a, b found) int { return a.seq - b.seq })
	for _, f := range problems {
		st.Problems = append(st.Problems, f.DigestProblem)
	}
	return err
}

// The deep audit reads a file's blobs in runs: consecutive blobs stored
// one after another in one pack (as a backup writes a file), up to
// digestRunBytes of plaintext, read with as few requests as their offsets
// allow. Up to digestWindow runs of one file are read while the earliest
// is hashed, within digestBytes of plaintext read and not yet hashed
// across all the files one audit hashes at once.
const (
	digestRunBytes = 4 << 20
	digestWindow   = 4
	digestBytes    = 64 << 20
)

// blobRun is one read of a file's blobs.
type blobRun struct {
	pack    ID
	entries []format.PackedBlob
	raw     int64 // plaintext bytes
}

// fileRuns splits the blobs of n into runs.
func (r *Repository) fileRuns(n *format.Node) ([]blobRun, error) {
	x := r.index()
	var runs []blobRun
	for _, id := range n.Content {
		pack, pb, ok := x.Lookup(format.DataHandle(id))
		if !ok {
			return nil, notInIndex(DataBlob, id)
		}
		if k := len(runs) - 1; k >= 0 && runs[k].pack == pack &&
			pb.Offset > runs[k].entries[len(runs[k].entries)-1].Offset && runs[k].raw+int64(pb.RawLength) <= digestRunBytes {
			runs[k].entries = append(runs[k].entries, pb)
			runs[k].raw += int64(pb.RawLength)
			continue
		}
		runs = append(runs, blobRun{pack: pack, entries: []format.PackedBlob{pb}, raw: int64(pb.RawLength)})
	}
	return runs, nil
}

// readRun reads a run's blobs, verified, and returns their plaintext in
// order.
func (r *Repository) readRun(ctx context.Context, run blobRun) ([]byte, error) {
	out := make([]byte, 0, run.raw)
	next := 0
	err := r.newPackReader(false).read(ctx, run.pack, run.entries, func(b readBlob) error {
		switch {
		case b.Err != nil:
			return b.Err
		case b.Index != next: // offsets rise along a run: cannot happen
			return fmt.Errorf("blob %s of pack %s read out of order", b.Entry.ID.Short(), run.pack.Short())
		}
		next++
		out = append(out, b.Plain...)
		return nil
	})
	return out, err
}

// verifyFileDigest hashes the blobs of the file n in order and compares
// the hash with its recorded digest. It returns the bytes it read and what
// is wrong, if anything. mem holds the plaintext read ahead: the run the
// file needs next is waited for only while the file holds none (so files
// waiting for each other's memory never deadlock), the runs after it are
// read ahead only while there is room.
func (r *Repository) verifyFileDigest(ctx context.Context, n *format.Node, mem *semaphore.Weighted) (read int64, problem string) {
	runs, err := r.fileRuns(n)
	if err != nil {
		return 0, err.Error()
	}
	type result struct {
		plain []byte
		err   error
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	weight := func(k int) int64 { return min(runs[k].raw, digestBytes) }
	results := make([]chan result, len(runs))
	start := func(k int) {
		results[k] = make(chan result, 1)
		go func() {
			plain, err := r.readRun(ctx, runs[k])
			results[k] <- result{plain, err}
		}()
	}
	started, done := 0, 0
	defer func() {
		// Runs read ahead of a failure: let them end, give back their room.
		cancel()
		for k := done; k < started; k++ {
			<-results[k]
			mem.Release(weight(k))
		}
	}()
	h := sha256.New()
	for done < len(runs) {
		if started == done {
			if err := mem.Acquire(ctx, weight(done)); err != nil {
				return read, err.Error()
			}
			start(done)
			started++
		}
		for started < len(runs) && started < done+digestWindow && mem.TryAcquire(weight(started)) {
			start(started)
			started++
		}
		res := <-results[done]
		mem.Release(weight(done))
		done++
		if res.err != nil {
			return read, res.err.Error()
		}
		h.Write(res.plain)
		read += int64(len(res.plain))
	}
	if n.Digest.IsNull() {
		return read, ""
	}
	if sum := ID(h.Sum(nil)); sum != n.Digest {
		return read, fmt.Sprintf("content SHA-256 %s differs from the %s recorded at ingest", sum.Short(), n.Digest.Short())
	}
	return read, ""
}

// HealResult says how a damaged pack was rewritten.
type HealResult struct {
	Pack        ID   `json:"pack"`
	NewPacks    []ID `json:"new_packs"`
	FromPack    int  `json:"blobs_from_pack"`    // blobs that still verified in the damaged pack
	FromReplica int  `json:"blobs_from_replica"` // blobs fetched from another repository
}

// ErrCannotHeal is returned (wrapped) by HealPack when no given repository
// holds a good copy of a damaged blob; the repository is left unchanged.
var ErrCannotHeal = errors.New("no good copy to heal from")

// HealPack rewrites a damaged pack: the blobs that still verify in it are
// copied as they are, every other blob it holds is fetched, verified by its
// hash, from the first of sources that has it and sealed with r's key. The
// new pack(s) are indexed by one index file that supersedes every index
// file listing the damaged pack, so from then on no reader looks into the
// damaged pack; it stays in data/, unindexed, until prune's rule for
// unindexed packs removes it.
//
// If some blob has no good copy anywhere, nothing is written and the error
// wraps ErrCannotHeal and names the blobs.
func (r *Repository) HealPack(ctx context.Context, pack ID, sources []*Repository) (*HealResult, error) {
	pp := packPath(pack)
	lock, err := r.Lock(ctx, false)
	if err != nil {
		return nil, fmt.Errorf("heal %s: %w", pp, err)
	}
	defer func() { _ = lock.Unlock(context.WithoutCancel(ctx)) }()

	// The index files that list the pack, and everything they list.
	var files []ID
	var keep []format.IndexPack
	var entries []format.PackedBlob
	var size int64
	err = r.forEachIndexFile(ctx, false, func(id ID, f *format.IndexFile) error {
		lists := false
		for _, p := range f.Packs {
			if p.ID == pack {
				lists = true
			}
		}
		if !lists {
			return nil
		}
		files = append(files, id)
		for _, p := range f.Packs {
			if p.ID == pack {
				if entries == nil {
					entries, size = p.Blobs, p.Size
				}
				continue
			}
			keep = append(keep, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("heal %s: %w", pp, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("heal %s: no index file lists the pack (already healed?)", pp)
	}
	res := &HealResult{Pack: pack}

	// The damaged pack as it is now, if it can be read at all.
	whole, rerr := loadWhole(ctx, r.be, backend.Handle{Type: backend.PackFile, Name: pack.String()}, size, nil)
	if rerr != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	type healed struct {
		pb     format.PackedBlob
		sealed []byte
	}
	var out []healed
	var missing []string
	// Blobs of the damaged pack that still verify are kept as they are.
	fromPack := make([][]byte, len(entries))
	if rerr == nil {
		pr := r.newPackReader(true)
		_ = pr.readBuffer(pack, whole, entries, func(b readBlob) error {
			if b.Err == nil {
				fromPack[b.Index] = b.Sealed
			}
			return nil
		})
	}
	for i, pb := range entries {
		if fromPack[i] != nil {
			out = append(out, healed{pb: pb, sealed: fromPack[i]})
			res.FromPack++
			continue
		}
		pt, err := fetchGood(ctx, pb.Handle(), sources)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			missing = append(missing, fmt.Sprintf("%s blob %s (%v)", pb.Type, pb.ID.Short(), err))
			continue
		}
		npb := pb
		npb.Flags = 0
		npb.RawLength = uint32(len(pt))
		out = append(out, healed{pb: npb, sealed: r.seal.Seal(nil, pt)})
		res.FromReplica++
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("heal %s: %w for %d blob(s): %s", pp, ErrCannotHeal, len(missing), joinShort(missing, 5))
	}

	rp := r.newRepacker(ctx)
	defer rp.close()
	for _, h := range out {
		if err := rp.add(h.pb, h.sealed); err != nil {
			return nil, fmt.Errorf("heal %s: %w", pp, err)
		}
	}
	newPacks, err := rp.finish()
	if err != nil {
		return nil, fmt.Errorf("heal %s: %w", pp, err)
	}
	for _, np := range newPacks {
		res.NewPacks = append(res.NewPacks, np.ID)
	}
	// Packs are durable; now the one index file that moves readers to
	// them (FORMAT.md §10: packs before index). A crash before it leaves
	// unindexed new packs, which prune removes.
	if err := lock.Valid(); err != nil {
		return nil, fmt.Errorf("heal %s: %w", pp, err)
	}
	if err := r.writeIndexes(ctx, append(keep, newPacks...), files); err != nil {
		return nil, fmt.Errorf("heal %s: write index: %w", pp, err)
	}
	for _, id := range files {
		h := backend.Handle{Type: backend.IndexFile, Name: id.String()}
		if err := r.be.Remove(ctx, h); err != nil && !errors.Is(err, backend.ErrNotExist) {
			// Superseded files are skipped by every reader; leaving one
			// is untidy, not wrong.
			r.log.Warn("heal: cannot remove a superseded index file", "file", h.Path(), "err", err)
		}
	}
	if err := r.refreshIndex(ctx, true); err != nil {
		return res, fmt.Errorf("heal %s: reload index: %w", pp, err)
	}
	return res, nil
}

// fetchGood returns the verified plaintext of blob h from the first
// repository of sources that has a good copy.
func fetchGood(ctx context.Context, h BlobHandle, sources []*Repository) ([]byte, error) {
	var errs []error
	for _, src := range sources {
		_ = src.refreshIndex(ctx, false)
		pt, err := src.loadBlob(ctx, h.Type, h.ID, nil)
		if err == nil {
			return pt, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", src.be.Location(), err))
	}
	if len(errs) == 0 {
		return nil, errors.New("no replica given")
	}
	return nil, errors.Join(errs...)
}

func joinShort(items []string, n int) string {
	if len(items) <= n {
		return fmt.Sprint(items)
	}
	return fmt.Sprintf("%v and %d more", items[:n], len(items)-n)
}

// CopyNeeds returns how many bytes (sealed, as src stores them) copying
// snaps into dst would write at most: the blobs below the snapshots that
// dst lacks. Space checks use it before a copy starts. It reads src's
// trees a level at a time (loadTrees), as the copy itself does, and not
// below a tree dst already has (Copy writes a tree after its subtree).
func CopyNeeds(ctx context.Context, src, dst *Repository, snaps []*Snapshot) (int64, error) {
	if err := dst.refreshIndex(ctx, false); err != nil {
		return 0, err
	}
	seen := map[BlobHandle]bool{}
	var need int64
	// add counts h unless it is counted already or dst has it, and says
	// whether it did.
	add := func(h BlobHandle) bool {
		if seen[h] || dst.index().Has(h) {
			return false
		}
		seen[h] = true
		if _, pb, ok := src.index().Lookup(h); ok {
			need += int64(pb.Length)
		}
		return true
	}
	// root names, for each tree of the level, a snapshot that reaches it,
	// so that an error says which snapshot depends on it.
	root := map[ID]*Snapshot{}
	var level []ID
	for _, sn := range snaps {
		if add(format.TreeHandle(sn.Tree)) {
			root[sn.Tree] = sn
			level = append(level, sn.Tree)
		}
	}
	for len(level) > 0 {
		loaded, err := src.loadTrees(ctx, level, false)
		if err != nil {
			return 0, err
		}
		var next []ID
		nextRoot := map[ID]*Snapshot{}
		for _, id := range level {
			lt := loaded[id]
			if lt.err != nil {
				return 0, fmt.Errorf("snapshot %s: %w", root[id].ID.Short(), lt.err)
			}
			for i := range lt.t.Nodes {
				n := &lt.t.Nodes[i]
				switch n.Type {
				case format.NodeDir:
					if add(format.TreeHandle(n.Subtree)) {
						nextRoot[n.Subtree] = root[id]
						next = append(next, n.Subtree)
					}
				case format.NodeFile:
					for _, b := range n.Content {
						add(format.DataHandle(b))
					}
				}
			}
		}
		level, root = next, nextRoot
	}
	return need, nil
}

// VerifyHeld checks that the snapshot id is complete in r: the snapshot
// file and every tree verify, and every file blob is indexed. A copy calls
// it on what it wrote before it records the replica.
func (r *Repository) VerifyHeld(ctx context.Context, id ID) error {
	sn, err := r.LoadSnapshot(ctx, id)
	if err != nil {
		return err
	}
	var missing int
	var first ID
	err = r.walkWholeTreeAt(ctx, "", sn.Tree, func(_ string, n *format.Node) error {
		if n.Type != format.NodeFile {
			return nil
		}
		for _, b := range n.Content {
			if !r.index().Has(format.DataHandle(b)) {
				if missing == 0 {
					first = b
				}
				missing++
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", id.Short(), err)
	}
	if missing > 0 {
		return fmt.Errorf("snapshot %s: %d file blob(s) are not indexed (first %s)", id.Short(), missing, first.Short())
	}
	return nil
}

// Refresh brings the in-memory index up to date with what other processes
// wrote since it was loaded (a long-lived Repository's view goes stale).
func (r *Repository) Refresh(ctx context.Context) error {
	return r.refreshIndex(ctx, false)
}
