// Package bagitcheck validates a bag on disk against the MUST rules of
// RFC 8493 (BagIt 1.0). It exists for tests: the reference validator
// (bagit-python's "bagit.py --validate") cannot be installed here, so the
// writer's bags are checked by this reader instead. It is written from the
// RFC, sharing no code with internal/bagit, so that the writer is never
// checked against itself.
//
// Rules checked (section numbers of RFC 8493):
//   - §2.1.1 bagit.txt: present; UTF-8 without a byte-order mark; exactly
//     the two lines "BagIt-Version: M.N" and
//     "Tag-File-Character-Encoding: ENCODING", in that order. This reader
//     knows version 1.0 and the UTF-8 encoding only.
//   - §2.1.2 data/ is present and is a folder.
//   - §2.1.3 at least one payload manifest; each line "checksum, linear
//     white space, path"; paths relative, "/"-separated, below data/, with
//     CR, LF and "%" percent-encoded (and no other "%"); a path listed once.
//   - §2.2.1 tag manifests list no payload file.
//   - §2.2.2 bag-info.txt: "Label: value" elements with optional
//     continuation lines; the non-repeatable reserved labels at most once;
//     Bagging-Date as YYYY-MM-DD; Payload-Oxum as octets.streams, equal to
//     the payload on disk.
//   - §3 complete and valid: every file in every manifest is present and
//     its checksum matches; every payload file is listed in every payload
//     manifest.
//   - §7 security: no path leaves the bag; nothing under data/ is a
//     symbolic link or special file.
//
// Beyond the MUSTs, what custos asks of its own bags: every tag file is in
// every tag manifest (RFC 8493 says SHOULD), and fetch.txt is not used.
package bagitcheck

import (
	"bytes"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

var hashes = map[string]func() hash.Hash{
	"md5": md5.New, "sha1": sha1.New, "sha256": sha256.New, "sha512": sha512.New,
}

var (
	versionLine  = regexp.MustCompile(`^BagIt-Version: ([0-9]+)\.([0-9]+)$`)
	encodingLine = regexp.MustCompile(`^Tag-File-Character-Encoding: (.+)$`)
	manifestName = regexp.MustCompile(`^(tag)?manifest-([a-z0-9]+)\.txt$`)
	oxumValue    = regexp.MustCompile(`^([0-9]+)\.([0-9]+)$`)
	dateValue    = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2}$`)
)

// Validate checks the bag in dir and returns every problem found, joined,
// or nil for a valid bag.
func Validate(dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("bag %s: %w", dir, err)
	}
	defer func() { _ = root.Close() }()
	c := &checker{root: root}
	c.run()
	if len(c.problems) == 0 {
		return nil
	}
	errs := make([]error, len(c.problems))
	for i, p := range c.problems {
		errs[i] = fmt.Errorf("bag %s: %s", dir, p)
	}
	return errors.Join(errs...)
}

type checker struct {
	root     *os.Root
	problems []string
}

func (c *checker) fail(format string, args ...any) {
	c.problems = append(c.problems, fmt.Sprintf(format, args...))
}

func (c *checker) run() {
	c.declaration()
	fi, err := c.root.Lstat("data")
	if err != nil || !fi.IsDir() {
		c.fail("§2.1.2: data/ is missing or not a folder")
		return
	}
	payload, octets := c.walkPayload()
	tagFiles := c.walkTagFiles()
	if _, ok := tagFiles["fetch.txt"]; ok {
		c.fail("fetch.txt is present; this checker does not fetch, and custos never writes one")
	}

	entries, err := c.root.FS().(fs.ReadDirFS).ReadDir(".")
	if err != nil {
		c.fail("cannot list the bag: %v", err)
		return
	}
	payloadManifests := 0
	for _, e := range entries {
		m := manifestName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		isTag, alg := m[1] == "tag", m[2]
		listed := c.manifest(e.Name(), alg, isTag)
		want := payload
		if isTag {
			want = tagFiles
		} else {
			payloadManifests++
		}
		for _, p := range sortedKeys(want) {
			if _, ok := listed[p]; !ok {
				if isTag {
					c.fail("tag file %q is not listed in %s", p, e.Name())
				} else {
					c.fail("§3: payload file %q is not listed in %s", p, e.Name())
				}
			}
		}
	}
	if payloadManifests == 0 {
		c.fail("§2.1.3: no payload manifest (manifest-<algorithm>.txt)")
	}
	c.bagInfo(octets, len(payload))
}

// lines splits a tag file into lines ended by LF, CR or CRLF. A last line
// without an ending counts as a line.
func lines(b []byte) []string {
	s := strings.ReplaceAll(string(b), "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func (c *checker) readTag(name string) ([]byte, bool) {
	b, err := c.root.ReadFile(name)
	if err != nil {
		c.fail("cannot read %s: %v", name, err)
		return nil, false
	}
	if !utf8.Valid(b) {
		c.fail("%s is not valid UTF-8", name)
		return nil, false
	}
	return b, true
}

func (c *checker) declaration() {
	fi, err := c.root.Lstat("bagit.txt")
	if err != nil || !fi.Mode().IsRegular() {
		c.fail("§2.1.1: bagit.txt is missing or not a regular file")
		return
	}
	b, ok := c.readTag("bagit.txt")
	if !ok {
		return
	}
	if bytes.HasPrefix(b, []byte("\xef\xbb\xbf")) {
		c.fail("§2.1.1: bagit.txt starts with a byte-order mark")
		return
	}
	ls := lines(b)
	if len(ls) != 2 {
		c.fail("§2.1.1: bagit.txt has %d lines, not 2", len(ls))
		return
	}
	if m := versionLine.FindStringSubmatch(ls[0]); m == nil {
		c.fail("§2.1.1: bagit.txt line 1 %q is not \"BagIt-Version: M.N\"", ls[0])
	} else if m[1] != "1" || m[2] != "0" {
		c.fail("bagit.txt: BagIt-Version %s.%s; this checker knows 1.0 only", m[1], m[2])
	}
	if m := encodingLine.FindStringSubmatch(ls[1]); m == nil {
		c.fail("§2.1.1: bagit.txt line 2 %q is not \"Tag-File-Character-Encoding: ENCODING\"", ls[1])
	} else if !strings.EqualFold(m[1], "UTF-8") {
		c.fail("bagit.txt: encoding %q; this checker reads UTF-8 only", m[1])
	}
}

// walkPayload returns every file below data/ and their total size.
func (c *checker) walkPayload() (map[string]bool, int64) {
	files := map[string]bool{}
	var octets int64
	err := fs.WalkDir(c.root.FS(), "data", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			c.fail("cannot walk %q: %v", p, err)
			return nil
		}
		switch t := d.Type(); {
		case t.IsDir():
		case t.IsRegular():
			fi, err := d.Info()
			if err != nil {
				c.fail("cannot stat %q: %v", p, err)
				return nil
			}
			files[p] = true
			octets += fi.Size()
		default:
			c.fail("§7: %q in the payload is a %s, not a regular file", p, t)
		}
		return nil
	})
	if err != nil {
		c.fail("cannot walk data/: %v", err)
	}
	return files, octets
}

// walkTagFiles returns every file outside data/ but the tag manifests.
func (c *checker) walkTagFiles() map[string]bool {
	files := map[string]bool{}
	err := fs.WalkDir(c.root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			c.fail("cannot walk %q: %v", p, err)
			return nil
		case p == "data":
			return fs.SkipDir
		case d.IsDir():
			return nil
		case !d.Type().IsRegular():
			c.fail("§7: tag file %q is a %s, not a regular file", p, d.Type())
		case !strings.Contains(p, "/") && strings.HasPrefix(p, "tagmanifest-"):
		default:
			files[p] = true
		}
		return nil
	})
	if err != nil {
		c.fail("cannot walk the bag: %v", err)
	}
	return files
}

// decodePath undoes the percent-encoding of §2.1.3. Only %0D, %0A and %25
// can appear: any other "%" is a "%" that was not encoded.
func decodePath(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			sb.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("%q: a %% that is not percent-encoded", s)
		}
		switch strings.ToUpper(s[i+1 : i+3]) {
		case "0D":
			sb.WriteByte('\r')
		case "0A":
			sb.WriteByte('\n')
		case "25":
			sb.WriteByte('%')
		default:
			return "", fmt.Errorf("%q: a %% that is not percent-encoded (only %%0D, %%0A and %%25 may appear)", s)
		}
		i += 2
	}
	return sb.String(), nil
}

// safePath checks that a decoded manifest path stays inside the bag.
func safePath(p string) error {
	if p == "" || strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0) {
		return fmt.Errorf("%q is not a relative path", p)
	}
	for _, el := range strings.Split(p, "/") {
		if el == "" || el == "." || el == ".." {
			return fmt.Errorf("%q has an empty, \".\" or \"..\" element", p)
		}
	}
	return nil
}

// manifest checks one manifest and returns the paths it lists.
func (c *checker) manifest(name, alg string, isTag bool) map[string]bool {
	listed := map[string]bool{}
	newHash := hashes[alg]
	if newHash == nil {
		c.fail("%s: algorithm %q is unknown to this checker", name, alg)
		return listed
	}
	b, ok := c.readTag(name)
	if !ok {
		return listed
	}
	hexLen := newHash().Size() * 2
	for i, line := range lines(b) {
		where := fmt.Sprintf("%s line %d", name, i+1)
		sum := line
		if j := strings.IndexAny(line, " \t"); j >= 0 {
			sum = line[:j]
		}
		rest := strings.TrimLeft(line[len(sum):], " \t")
		if len(rest) == len(line)-len(sum) || rest == "" {
			c.fail("§2.1.3: %s: %q is not \"checksum path\"", where, line)
			continue
		}
		if _, err := hex.DecodeString(sum); err != nil || len(sum) != hexLen {
			c.fail("§2.1.3: %s: %q is not a %s checksum", where, sum, alg)
			continue
		}
		p, err := decodePath(rest)
		if err != nil {
			c.fail("§2.1.3: %s: %v", where, err)
			continue
		}
		if err := safePath(p); err != nil {
			c.fail("§7: %s: %v", where, err)
			continue
		}
		inData := strings.HasPrefix(p, "data/")
		switch {
		case isTag && inData:
			c.fail("§2.2.1: %s: tag manifest lists payload file %q", where, p)
			continue
		case !isTag && !inData:
			c.fail("§2.1.3: %s: %q is not below data/", where, p)
			continue
		case listed[p]:
			c.fail("%s: %q is listed twice", where, p)
			continue
		}
		listed[p] = true
		c.verify(where, p, sum, newHash)
	}
	return listed
}

func (c *checker) verify(where, p, want string, newHash func() hash.Hash) {
	fi, err := c.root.Lstat(p)
	if err != nil || !fi.Mode().IsRegular() {
		c.fail("§3: %s: %q is missing or not a regular file", where, p)
		return
	}
	f, err := c.root.Open(p)
	if err != nil {
		c.fail("§3: %s: %v", where, err)
		return
	}
	defer func() { _ = f.Close() }()
	h := newHash()
	if _, err := io.Copy(h, f); err != nil {
		c.fail("§3: %s: read %q: %v", where, p, err)
		return
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != strings.ToLower(want) {
		c.fail("§3: %s: checksum of %q is %s, the manifest says %s", where, p, got, want)
	}
}

// notRepeatable are the reserved labels of §2.2.2 that may appear once.
var notRepeatable = []string{"Bagging-Date", "Bag-Size", "Payload-Oxum", "Bag-Group-Identifier", "Bag-Count"}

func (c *checker) bagInfo(octets int64, files int) {
	if _, err := c.root.Lstat("bag-info.txt"); errors.Is(err, fs.ErrNotExist) {
		return
	}
	b, ok := c.readTag("bag-info.txt")
	if !ok {
		return
	}
	values := map[string][]string{}
	last := ""
	for i, line := range lines(b) {
		where := fmt.Sprintf("bag-info.txt line %d", i+1)
		if line != "" && (line[0] == ' ' || line[0] == '\t') {
			if last == "" {
				c.fail("§2.2.2: %s: a continuation line with no element before it", where)
			}
			continue
		}
		label, value, ok := strings.Cut(line, ":")
		switch {
		case !ok:
			c.fail("§2.2.2: %s: %q has no colon", where, line)
			continue
		case label == "" || strings.TrimSpace(label) != label:
			c.fail("§2.2.2: %s: label %q is empty or starts or ends with white space", where, label)
			continue
		case value != "" && value[0] != ' ' && value[0] != '\t':
			c.fail("§2.2.2: %s: no white space after the colon", where)
			continue
		}
		last = label
		values[strings.ToLower(label)] = append(values[strings.ToLower(label)], strings.TrimLeft(value, " \t"))
	}
	for _, l := range notRepeatable {
		if n := len(values[strings.ToLower(l)]); n > 1 {
			c.fail("§2.2.2: bag-info.txt has %s %d times; it is not repeatable", l, n)
		}
	}
	for _, d := range values["bagging-date"] {
		if !dateValue.MatchString(d) {
			c.fail("§2.2.2: Bagging-Date %q is not YYYY-MM-DD", d)
		}
	}
	for _, o := range values["payload-oxum"] {
		m := oxumValue.FindStringSubmatch(o)
		if m == nil {
			c.fail("§2.2.2: Payload-Oxum %q is not OctetCount.StreamCount", o)
			continue
		}
		gotOctets, _ := strconv.ParseInt(m[1], 10, 64)
		gotFiles, _ := strconv.Atoi(m[2])
		if gotOctets != octets || gotFiles != files {
			c.fail("§2.2.2: Payload-Oxum %s, but the payload has %d octets in %d files", o, octets, files)
		}
	}
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Info returns the elements of bag-info.txt by label (continuation lines
// joined with a space), for tests that check the metadata.
func Info(dir string) (map[string][]string, error) {
	b, err := os.ReadFile(path.Join(dir, "bag-info.txt"))
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	var label string
	for _, line := range lines(b) {
		if line != "" && (line[0] == ' ' || line[0] == '\t') && label != "" {
			vs := out[label]
			vs[len(vs)-1] += " " + strings.TrimSpace(line)
			continue
		}
		l, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("bag-info.txt: %q has no colon", line)
		}
		label = l
		out[l] = append(out[l], strings.TrimLeft(v, " \t"))
	}
	return out, nil
}
