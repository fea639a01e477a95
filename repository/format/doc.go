// Package format is the on-disk format of a custos repository, as code:
// ids and blob handles, the sealer (AES-256-GCM, or a SHA-256 checksum in
// unencrypted repositories), and the encoders and decoders of every stored
// object: config and key files, pack headers and trailers, index files,
// trees and snapshots. The specification is ../FORMAT.md; a format change
// starts there and then changes this package.
//
// The package is pure: it reads and writes byte slices only, never a
// backend, and keeps no state. What it guarantees:
//
//   - Every decoder accepts only what FORMAT.md allows. Hostile input gives
//     an error, never a panic, and allocations stay proportional to the
//     input (each decoder is fuzzed).
//   - A decoded tree names only direct children (no "", ".", "..", '/' or
//     NUL), so code that restores from it cannot leave its target by name.
//   - A decoded pack header or index entry is consistent on its own: known
//     type and flags, plausible lengths, and a pack header's blobs tile the
//     pack's data exactly.
//   - Open fails, wrapping ErrAuth, on any stored byte that changed. It
//     does not check that plaintext hashes to its id; readers of blobs do.
//   - A blob is known by its BlobHandle (type and id), never by its id
//     alone: a data blob and a tree blob may share an id.
package format
