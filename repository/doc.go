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
//     the blob saver that deduplicates, compresses, seals, packs and uploads
//     (pipeline.go), pack writing and pack-header reading (pack.go),
//     verified blob reading (blob.go), trees and snapshots (tree.go,
//     snapshot.go).
//   - Operations on top: backup and stream backup, restore, check and
//     fixity, forget and prune, copy, stats and ls.
//
// # Contracts between the parts
//
//   - A blob is known by its (type, id) handle everywhere: in the index, the
//     saver's pending set, prune's used set, copy, check and stats. A data
//     blob and a tree blob with the same id are two blobs.
//   - Every blob read back is verified: the seal (AEAD or checksum), the
//     decompressed length, and the SHA-256 of the plaintext against its id.
//     Code that loads byte ranges of packs itself (restore, check
//     --read-data, fixity, prune) opens each blob through the same
//     verified path (openBlob), never with the sealer alone.
//   - Writers take their lock, then refresh the index strictly, then save
//     blobs; they write packs, then the index files that list them, then
//     the snapshot that references them, and check that their lock is
//     still valid before they write the index. A reader that meets
//     these objects in the reverse order (snapshots, index, packs) never
//     sees a reference to something not yet written.
//   - Pack names are the SHA-256 of the pack bytes: a fixity pass verifies
//     a whole pack with sha256 alone (no key), then each blob with the key.
//   - Prune follows the deletion rule in FORMAT.md ("Locks and prune"): it
//     writes index files that supersede the old ones before it deletes any
//     pack, and deletes the old index files last.
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
