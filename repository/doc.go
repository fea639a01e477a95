// Package repository is custos's content-addressed, deduplicating,
// encrypted store: it chunks files and streams into blobs, packs them,
// keeps an index, and records trees and snapshots on a backend.Backend.
// The on-disk format is specified in FORMAT.md and implemented, without
// I/O, by package format; this package does the I/O and the operations.
//
// # Parts
//
// The package is layered; each layer builds on the ones before it and does
// not re-read the format itself.
//
//   - format (subpackage): ids, blob handles, the sealer and the codecs of
//     every stored object. Pure; fuzzed.
//   - index (subpackage): the in-memory index, keyed by blob handle (type,
//     id), one location per blob. It owns its map and lock.
//   - Core, in this package: Repository (open, init, keys, config), locks
//     (lock.go), loading and refreshing the index from index/ (index.go),
//     trees and snapshots (tree.go, snapshot.go), and one component for
//     each step of writing and reading:
//   - The pack builder (pack.go) assembles one pack in memory, in a temp
//     file or staged in the repository, hashing it as it goes; its fits
//     rule keeps every pack, header and trailer included, within
//     pack_size unless one blob alone is larger.
//   - The blob saver (pipeline.go) deduplicates by (type, id) against the
//     index and its own pending set, compresses, seals, and fills packs
//     through the pack builder; what it writes is durable but unreachable
//     until the packs are committed.
//   - The write session (session.go) is the only way backup, stream
//     backup and copy write: shared lock, strict index refresh, one or
//     more savers, and on commit: flush and wait, lock still valid, index
//     files for the packs, and only then the snapshot.
//   - The repacker (repack.go) moves blobs already sealed with this key
//     into new packs through the same pack builder (prune's rewrite,
//     heal). It writes packs only; the caller writes the superseding
//     index files after checking its lock.
//   - The pack reader (packread.go) is the only way blobs are read out of
//     packs (single blob loads, copy, restore, check, fixity, heal,
//     prune): it loads the needed byte ranges of a pack, nearby ranges in
//     one request, or takes a whole pack already in memory, verifies each
//     blob and hands its plaintext (and, on request, its sealed bytes) to
//     a callback; a blob that fails arrives as a *BlobError naming pack
//     and blob, and the read goes on with the next.
//   - Operations on top: backup and stream backup, restore, check and
//     fixity, forget and prune, copy, stats and ls. Backup, restore, check
//     (and fixity, which shares its state) and copy do not hold the whole
//     repository: each asks for the roles it uses, small interfaces
//     defined where they are used. Backup writes to a blob sink; restore
//     and copy's source read through where a blob is, trees a level at a
//     time, and pack readers; RestoreFile through single trees and blobs;
//     check through the backend's listings and loads, an opener of the
//     keyed objects (index files, snapshots, pack headers) and pack
//     readers; copy writes to its destination's write session (dedup
//     lookup, saver, commits); the pack reader loads through a loader and
//     verifies through an opener. A test hands any of them a real part
//     wrapped to count or to fail in one role. Prune finds what snapshots
//     use through the tree loader (a level at a time, as restore plans),
//     as restic's prune finds used blobs through its Loader; forget asks
//     for a snapshot remover (lock, snapshots, removal of one snapshot
//     file); ls and find through a tree walker (single trees, trees a level
//     at a time, requests in flight), stats through its snapshots and
//     index; prune's planning and deletion still take the repository
//     itself.
//
// # Contracts between the parts
//
//   - A blob is known by its (type, id) handle everywhere: in the index, the
//     saver's pending set, prune's used set, copy, check and stats. A data
//     blob and a tree blob with the same id are two blobs.
//   - Every blob read back is verified: the seal (AEAD or checksum), the
//     decompressed length, and the SHA-256 of the plaintext against its id.
//     All of it happens in the pack reader (through openBlob); no
//     operation opens a blob with the sealer alone.
//   - Writers write packs, then the index files that list them, then the
//     snapshot that references them, and check that their lock is still
//     valid before they write the index; the write session does this for
//     every writer that adds snapshots. A reader that meets these objects
//     in the reverse order (snapshots, index, packs) never sees a
//     reference to something not yet written.
//   - Pack names are the SHA-256 of the pack bytes: a fixity pass verifies
//     a whole pack with sha256 alone (no key), then each blob with the key.
//   - Prune follows the deletion rule in FORMAT.md ("Locks and prune"): it
//     writes index files that supersede the old ones before it deletes any
//     pack, and deletes the old index files last. Heal supersedes the index
//     files that list the damaged pack the same way.
//
// Backups write packs straight into a local repository
// (local.Backend.Stage: a temp file renamed into place on commit). For other
// backends they are assembled in memory (at most one per packer and one per
// uploader), or in unlinked temp files when pack_size is above 32 MiB.
// Repository.packsInMemory forces in-memory packs.
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
