// Package bagit writes BagIt bags (RFC 8493, BagIt 1.0) with SHA-256
// manifests.
//
// What it guarantees:
//   - A bag is built in a hidden folder beside its final place and renamed
//     to its final name only once every file is written and synced (the
//     file system at once with syncfs on Linux, else file by file), so a
//     failed or interrupted export never leaves a partial bag under the
//     final name. It never replaces an existing bag.
//   - Every payload file is hashed as it is written, and the digest of the
//     bytes on disk must equal the digest the caller says the file has (the
//     one recorded at ingest), or the file, named, fails the bag.
//   - Everything goes through an os.Root on the target folder: no name can
//     make it write outside that folder.
//   - Manifest paths are percent-encoded as RFC 8493 §2.1.3 asks (CR, LF and
//     "%" only); tag files are UTF-8 without a byte-order mark.
//
// The package knows nothing about custos' catalog or repository: the caller
// streams each payload file in and names the metadata.
package bagit

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Names of the files the writer produces.
const (
	DeclarationFile = "bagit.txt"
	InfoFile        = "bag-info.txt"
	ManifestFile    = "manifest-sha256.txt"
	TagManifestFile = "tagmanifest-sha256.txt"
	PayloadDir      = "data"
)

// Field is one bag-info.txt element.
type Field struct{ Label, Value string }

// DigestError is returned by AddFile when the bytes written do not match
// the digest (or size) the caller expected.
type DigestError struct {
	Path      string // payload path, "data/..."
	Want, Got string // hex SHA-256
	WantSize  int64  // -1 when not known
	GotSize   int64
}

func (e *DigestError) Error() string {
	if e.WantSize >= 0 && e.WantSize != e.GotSize {
		return fmt.Sprintf("payload file %q: %d bytes were written, but the file had %d bytes at ingest", e.Path, e.GotSize, e.WantSize)
	}
	return fmt.Sprintf("payload file %q: the SHA-256 of the bytes written is %s, but the digest recorded at ingest is %s", e.Path, e.Got, e.Want)
}

// Bag is one bag being written. AddFile may be called from several
// goroutines at once (each file is written on its own); Commit and Abort
// must not run at the same time as anything else.
type Bag struct {
	dir  *os.Root // the folder that receives the bag
	name string   // the bag's final name in dir
	tmp  string   // the hidden folder it is built in
	root *os.Root // opened on tmp

	mu     sync.Mutex
	files  map[string]string // payload path -> hex digest ("" while written)
	octets int64
	closed bool
	// perFileSync makes Commit sync each file and folder instead of the
	// file system at once (what it falls back to where syncfs fails).
	perFileSync bool
}

// Create starts a bag that Commit will name name inside dir. name must be a
// single path element, and nothing may exist under it yet.
func Create(dir *os.Root, name string) (*Bag, error) {
	if err := checkBagName(name); err != nil {
		return nil, err
	}
	if err := absent(dir, name); err != nil {
		return nil, err
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("bag %s: %w", name, err)
	}
	tmp := ".partial-" + hex.EncodeToString(rnd[:]) + "-" + name
	if len(tmp) > 255 {
		tmp = tmp[:255]
	}
	if err := dir.Mkdir(tmp, 0o755); err != nil {
		return nil, fmt.Errorf("bag %s: create its temporary folder: %w", name, err)
	}
	root, err := dir.OpenRoot(tmp)
	if err != nil {
		_ = dir.RemoveAll(tmp)
		return nil, fmt.Errorf("bag %s: open its temporary folder: %w", name, err)
	}
	b := &Bag{dir: dir, name: name, tmp: tmp, root: root, files: map[string]string{}}
	if err := root.Mkdir(PayloadDir, 0o755); err != nil {
		b.Abort()
		return nil, fmt.Errorf("bag %s: create %s/: %w", name, PayloadDir, err)
	}
	return b, nil
}

// Name is the bag's final name.
func (b *Bag) Name() string { return b.name }

// Files and Octets are the payload written so far (the Payload-Oxum).
func (b *Bag) Files() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.files)
}

func (b *Bag) Octets() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.octets
}

func checkBagName(name string) error {
	switch {
	case name == "", name == ".", name == "..", strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("bag name %q is not a single folder name", name)
	case len(name) > 200:
		return fmt.Errorf("bag name %q is longer than 200 bytes", name)
	}
	return nil
}

// absent fails when something exists at name in dir.
func absent(dir *os.Root, name string) error {
	_, err := dir.Lstat(name)
	switch {
	case err == nil:
		return fmt.Errorf("bag %s: %s already exists in %s; remove it or export into another folder: %w", name, name, dir.Name(), fs.ErrExist)
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("bag %s: %w", name, err)
	}
	return nil
}

// checkPayloadPath accepts a slash path below data/ that names a file and
// can be written into a UTF-8 manifest.
func checkPayloadPath(rel string) error {
	if !utf8.ValidString(rel) {
		return fmt.Errorf("payload path %q is not valid UTF-8, so no UTF-8 manifest can name it", rel)
	}
	if rel == "" || strings.HasPrefix(rel, "/") || strings.ContainsRune(rel, 0) {
		return fmt.Errorf("payload path %q is not a relative file path", rel)
	}
	for _, el := range strings.Split(rel, "/") {
		if el == "" || el == "." || el == ".." {
			return fmt.Errorf("payload path %q has an empty, \".\" or \"..\" element", rel)
		}
	}
	return nil
}

// AddFile writes one payload file, data/rel, with the bytes fill writes.
// The SHA-256 of the bytes (and their count, when size >= 0) must match
// sha256Hex, or AddFile returns a *DigestError naming the file. After any
// error the bag is unusable; call Abort.
func (b *Bag) AddFile(ctx context.Context, rel string, size int64, sha256Hex string, fill func(io.Writer) error) error {
	if err := checkPayloadPath(rel); err != nil {
		return fmt.Errorf("bag %s: %w", b.name, err)
	}
	p := PayloadDir + "/" + rel
	want, err := hex.DecodeString(sha256Hex)
	if err != nil || len(want) != sha256.Size {
		return fmt.Errorf("bag %s: payload file %q: the recorded digest %q is not a SHA-256", b.name, p, sha256Hex)
	}
	b.mu.Lock()
	closed := b.closed
	_, dup := b.files[p]
	if !closed && !dup {
		b.files[p] = "" // taken: a second AddFile of p fails
	}
	b.mu.Unlock()
	switch {
	case closed:
		return errors.New("bag: AddFile after Commit or Abort")
	case dup:
		return fmt.Errorf("bag %s: payload file %q added twice", b.name, p)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if d := path.Dir(p); d != PayloadDir {
		if err := b.root.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("bag %s: payload folder %q: %w", b.name, d, err)
		}
	}
	f, err := b.root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("bag %s: payload file %q: %w", b.name, p, err)
	}
	hw := &hashWriter{w: f, h: sha256.New(), want: [sha256.Size]byte(want)}
	// Not synced here: Commit syncs the whole bag at once (one syncfs on
	// Linux), which for a bag of many small files is most of the time a
	// sync per file would take.
	err = fill(hw)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("bag %s: payload file %q: %w", b.name, p, err)
	}
	got := hw.h.Sum(nil)
	switch {
	case size >= 0 && hw.n != size:
		return &DigestError{Path: p, WantSize: size, GotSize: hw.n, Want: sha256Hex, Got: hex.EncodeToString(got)}
	case !bytes.Equal(got, want):
		return &DigestError{Path: p, WantSize: size, GotSize: hw.n, Want: strings.ToLower(sha256Hex), Got: hex.EncodeToString(got)}
	}
	b.mu.Lock()
	b.files[p] = hex.EncodeToString(got)
	b.octets += hw.n
	b.mu.Unlock()
	return nil
}

type hashWriter struct {
	w    io.Writer
	h    hash.Hash
	n    int64
	want [sha256.Size]byte
}

// VerifiesSHA256 is the digest the bytes written must have: AddFile checks
// it once fill returns, and fails the file otherwise. A fill that would
// hash the same bytes for the same check (a restore of a file against its
// recorded digest) can leave it to the bag and hash once.
func (w *hashWriter) VerifiesSHA256() [sha256.Size]byte { return w.want }

func (w *hashWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// EncodePath percent-encodes a manifest path as RFC 8493 §2.1.3 asks:
// CR, LF and "%", and only those.
func EncodePath(p string) string {
	if !strings.ContainsAny(p, "%\r\n") {
		return p
	}
	var sb strings.Builder
	for i := 0; i < len(p); i++ {
		switch c := p[i]; c {
		case '%':
			sb.WriteString("%25")
		case '\r':
			sb.WriteString("%0D")
		case '\n':
			sb.WriteString("%0A")
		default:
			sb.WriteByte(c)
		}
	}
	return sb.String()
}

// Commit writes bagit.txt, manifest-sha256.txt, bag-info.txt (info, then
// Bagging-Date unless info has one, and Payload-Oxum) and
// tagmanifest-sha256.txt, syncs the bag and renames it to its final name.
// It returns the bag's path. On error the bag is removed.
func (b *Bag) Commit(now time.Time, info []Field) (string, error) {
	if b.closed {
		return "", errors.New("bag: Commit after Commit or Abort")
	}
	p, err := b.commit(now, info)
	if err != nil {
		b.Abort()
		return "", fmt.Errorf("bag %s: %w", b.name, err)
	}
	return p, nil
}

func (b *Bag) commit(now time.Time, info []Field) (string, error) {
	tagSums := map[string]string{}
	writeTag := func(name string, body []byte) error {
		if err := writeSynced(b.root, name, body); err != nil {
			return err
		}
		s := sha256.Sum256(body)
		tagSums[name] = hex.EncodeToString(s[:])
		return nil
	}
	if err := writeTag(DeclarationFile, []byte("BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n")); err != nil {
		return "", err
	}
	if err := writeTag(ManifestFile, manifest(b.files)); err != nil {
		return "", err
	}
	body, err := bagInfo(now, info, b.octets, len(b.files))
	if err != nil {
		return "", err
	}
	if err := writeTag(InfoFile, body); err != nil {
		return "", err
	}
	if err := writeSynced(b.root, TagManifestFile, manifest(tagSums)); err != nil {
		return "", err
	}
	// Every payload file and folder on disk before the rename publishes
	// them: the file system at once where it can (syncfs also flushes other
	// writers' data on it, which only costs them a flush they would do
	// later), else one by one.
	if b.perFileSync || syncFS(b.root) != nil {
		if err := syncEach(b.root); err != nil {
			return "", err
		}
	}
	if err := b.root.Close(); err != nil {
		return "", err
	}
	// Checked again: the folder may have appeared while the bag was written.
	// Rename would replace an empty folder of that name; nothing else.
	if err := absent(b.dir, b.name); err != nil {
		return "", err
	}
	if err := b.dir.Rename(b.tmp, b.name); err != nil {
		return "", fmt.Errorf("rename into place: %w", err)
	}
	b.closed = true
	if d, err := b.dir.Open("."); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return b.dir.Name() + string(os.PathSeparator) + b.name, nil
}

// Abort removes the unfinished bag. It is a no-op after Commit.
func (b *Bag) Abort() {
	if b.closed {
		return
	}
	b.closed = true
	_ = b.root.Close()
	_ = b.dir.RemoveAll(b.tmp)
}

// manifest lists path -> hex digest, sorted by path.
func manifest(sums map[string]string) []byte {
	paths := make([]string, 0, len(sums))
	for p := range sums {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	for _, p := range paths {
		// Two spaces, as bagit-python writes them; one or more is valid.
		fmt.Fprintf(&buf, "%s  %s\n", sums[p], EncodePath(p))
	}
	return buf.Bytes()
}

// reservedOnce are the reserved bag-info labels RFC 8493 §2.2.2 says are
// not repeatable.
var reservedOnce = []string{"Bagging-Date", "Bag-Size", "Payload-Oxum", "Bag-Group-Identifier", "Bag-Count"}

func bagInfo(now time.Time, info []Field, octets int64, files int) ([]byte, error) {
	seen := map[string]bool{}
	var buf bytes.Buffer
	add := func(f Field) error {
		switch {
		case f.Label == "" || strings.ContainsAny(f.Label, ":\r\n") || strings.TrimSpace(f.Label) != f.Label:
			return fmt.Errorf("bag-info label %q: empty, with a colon or a line break, or starting or ending with white space", f.Label)
		case strings.ContainsAny(f.Value, "\r\n"):
			return fmt.Errorf("bag-info %s: the value %q has a line break", f.Label, f.Value)
		case !utf8.ValidString(f.Label) || !utf8.ValidString(f.Value):
			return fmt.Errorf("bag-info %s: not valid UTF-8", f.Label)
		}
		for _, r := range reservedOnce {
			if strings.EqualFold(r, f.Label) && seen[r] {
				return fmt.Errorf("bag-info %s: given twice, and it is not repeatable", f.Label)
			} else if strings.EqualFold(r, f.Label) {
				seen[r] = true
			}
		}
		fmt.Fprintf(&buf, "%s: %s\n", f.Label, f.Value)
		return nil
	}
	for _, f := range info {
		if strings.EqualFold(f.Label, "Payload-Oxum") {
			return nil, errors.New("bag-info Payload-Oxum is computed by the writer")
		}
		if err := add(f); err != nil {
			return nil, err
		}
	}
	if !seen["Bagging-Date"] {
		if err := add(Field{"Bagging-Date", now.Format(time.DateOnly)}); err != nil {
			return nil, err
		}
	}
	if err := add(Field{"Payload-Oxum", strconv.FormatInt(octets, 10) + "." + strconv.Itoa(files)}); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func writeSynced(root *os.Root, name string, body []byte) error {
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	_, err = f.Write(body)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// syncEach syncs every file and folder of the bag, so that the rename
// publishes entries that are on disk.
func syncEach(root *os.Root) error {
	return fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		f, err := root.Open(p)
		if err != nil {
			return err
		}
		err = f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("sync %q: %w", p, err)
		}
		return nil
	})
}
