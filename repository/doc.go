// Package repository is custos's content-addressed, deduplicating,
// encrypted store: it chunks files and streams into blobs, packs them,
// keeps an index, and records trees and snapshots on a backend.Backend.
// The on-disk format is specified in FORMAT.md; this package follows it.
//
// # Internal API for check.go, copy.go, forget.go, prune.go, stats.go
//
// These files live in this package and should build on the following
// unexported pieces instead of re-reading the format:
//
//	r.be, r.seal, r.cfg           backend, sealer (AEAD or checksum), config
//	r.index() *index.Index              in-memory index (one location per blob),
//	    keyed by BlobHandle{Type, ID}; use its methods (lookup, has,
//	    count, packIDs, ...), never its fields or its lock.
//	r.loadIndex(ctx)              rebuild r.index() from index/ (after prune)
//	r.forEachIndexFile(ctx, all, fn(id ID, f *indexFile) error)
//	    every index file, verified; all=false skips superseded files.
//	    indexFile{Supersedes []ID; Packs []indexPack{ID, Size, Blobs []packedBlob}}
//	r.saveIndexFile(ctx, *indexFile) (ID, error)   (prune: set Supersedes)
//	r.commitPacks(ctx, []indexPack)  index files for new packs + in-memory add
//	r.readPackHeader(ctx, pack ID, size int64) (*packHeader, error)
//	    reads only the tail; packHeader{Created time.Time; Blobs []packedBlob}
//	r.openBlob(pb packedBlob, sealed, dst []byte) ([]byte, error)
//	    verifies AEAD/checksum, decompresses, checks length and SHA-256.
//	    Use it on byte ranges you loaded yourself (check --read-data, copy).
//	r.loadBlob(ctx, t BlobType, id, buf) ([]byte, error)  verified plaintext via index
//	r.loadTree(ctx, id) (*tree, error); r.walkTree(ctx, treeID, fn(path, *node) error)
//	    fn may return errSkipSubtree. node: Type, Content []ID, Subtree ID, Digest, Size...
//	r.newBlobSaver(ctx, g *errgroup.Group, &bufPool{}) *blobSaver
//	    full, data := s.newBuf(n); s.save(t, id, full, n) / s.saveCopy(t, data) (ID, error):
//	    dedup, compress, seal, pack, upload;
//	    s.flush() ([]indexPack, error) then g.Wait(), then r.commitPacks.
//	    (copy.go: load plaintext from src with loadBlob, saveCopy into dst.)
//	newPackBuilder(inMemory) / packBuilder{} (in memory): add, finish -> pack id,
//	    reader, close; for prune's rewrites without the whole pipeline.
//	r.listIDs(ctx, backend.FileType, bad func(name)) ([]ID, error)
//	r.saveSnapshot(ctx, *Snapshot); r.LoadSnapshot; r.Snapshots
//	r.listLocks(ctx) ([]lockEntry, error); r.Lock(ctx, true) for prune;
//	    lockEntry{Name; Info *lockInfo{Exclusive, Created, Refreshed, ...}; Err}
//	hashID(b) ID; decodeTree/encodeTree; decodeIndexFile/encodeIndexFile;
//	decodePackHeader/encodePackHeader; BlobError{Blob, Pack, Err}.
//
// Backups write packs straight into a local repository
// (local.Backend.Stage: a temp file renamed into place on commit). For other
// backends they are assembled in memory (at most one per packer and one per
// uploader), or in unlinked temp files when pack_size is above 32 MiB.
// Repository.packsInMemory forces in-memory packs.
//
// Pack names are the SHA-256 of the pack bytes: a fixity pass can verify a
// whole pack with sha256 alone (no key), then verify each blob with
// openBlob. Prune must follow the deletion rule in FORMAT.md ("Locks and
// prune").
//
// # Restore and ownership
//
// Restore writes through os.Root, so no name from a repository can make it
// write outside the target; names are also validated when trees are
// decoded. It restores file contents, modes (including setuid/setgid/sticky),
// mtimes (also of symlinks and directories), symlinks, hard links (by
// inode/device within one restore), FIFOs, and device nodes when running as
// root. Owners (uid/gid) are restored only when running as root; otherwise
// files belong to the restoring user and the recorded uid/gid stay only in
// the snapshot. Access times are set equal to mtimes. Sockets are skipped.
// All-zero blobs are not written: restored files are sparse where the
// backed-up data was zero.
package repository
