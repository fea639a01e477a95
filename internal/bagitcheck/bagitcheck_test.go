package bagitcheck

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

func sum(b string) string {
	s := sha256.Sum256([]byte(b))
	return hex.EncodeToString(s[:])
}

// handBag is a bag written out by hand in the test, not by the writer: a
// map of file name to content, and the manifests derived from it unless a
// mutation overrides them.
type handBag struct {
	payload       map[string]string // path below the bag, "data/..."
	tags          map[string]string // other files, by path
	noTagManifest bool
}

func validHandBag() *handBag {
	payload := map[string]string{
		"data/plain.txt":      "hello\n",
		"data/with space.txt": "space\n",
		"data/café/日本.txt":    "unicode\n",
		"data/100%.txt":       "percent\n",
		"data/a\nb":           "newline\n",
		"data/empty":          "",
	}
	var octets int
	for _, c := range payload {
		octets += len(c)
	}
	return &handBag{payload: payload, tags: map[string]string{
		"bagit.txt":    "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n",
		"bag-info.txt": fmt.Sprintf("Bagging-Date: 2024-05-01\nExternal-Description: a bag written\n  by hand\nPayload-Oxum: %d.%d\n", octets, len(payload)),
	}}
}

func encode(p string) string {
	return strings.NewReplacer("%", "%25", "\r", "%0D", "\n", "%0A").Replace(p)
}

func manifestOf(files map[string]string) string {
	var lines []string
	for p, c := range files {
		lines = append(lines, sum(c)+"  "+encode(p)+"\n")
	}
	sort.Strings(lines)
	return strings.Join(lines, "")
}

func (h *handBag) write(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	tags := map[string]string{}
	for k, v := range h.tags {
		tags[k] = v
	}
	if _, ok := tags["manifest-sha256.txt"]; !ok {
		tags["manifest-sha256.txt"] = manifestOf(h.payload)
	}
	if _, ok := tags["tagmanifest-sha256.txt"]; !ok && !h.noTagManifest {
		tags["tagmanifest-sha256.txt"] = manifestOf(tags)
	}
	for _, files := range []map[string]string{h.payload, tags} {
		for p, c := range files {
			if c == "\x00delete" {
				continue
			}
			full := filepath.Join(dir, filepath.FromSlash(p))
			if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

// TestValidate checks a hand-made valid bag, then one mutation per rule:
// each must be reported, naming what is wrong.
func TestValidate(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(h *handBag)
		after  func(t *testing.T, dir string) // changes on disk after writing
		want   string                         // "" = valid
	}{
		{name: "valid", want: ""},
		{name: "CRLF line endings are valid", mutate: func(h *handBag) {
			h.tags["bagit.txt"] = "BagIt-Version: 1.0\r\nTag-File-Character-Encoding: UTF-8\r\n"
		}, want: ""},
		{name: "no tag manifest is valid", mutate: func(h *handBag) { h.noTagManifest = true }, want: ""},
		{name: "byte-order mark in bagit.txt", mutate: func(h *handBag) {
			h.tags["bagit.txt"] = "\xef\xbb\xbf" + h.tags["bagit.txt"]
		}, want: "byte-order mark"},
		{name: "three lines in bagit.txt", mutate: func(h *handBag) {
			h.tags["bagit.txt"] += "Extra: line\n"
		}, want: "bagit.txt has 3 lines"},
		{name: "version not M.N", mutate: func(h *handBag) {
			h.tags["bagit.txt"] = "BagIt-Version: 1\nTag-File-Character-Encoding: UTF-8\n"
		}, want: `line 1 "BagIt-Version: 1"`},
		{name: "lines swapped", mutate: func(h *handBag) {
			h.tags["bagit.txt"] = "Tag-File-Character-Encoding: UTF-8\nBagIt-Version: 1.0\n"
		}, want: "line 1"},
		{name: "no bagit.txt", mutate: func(h *handBag) { h.tags["bagit.txt"] = "\x00delete" }, want: "bagit.txt is missing"},
		{name: "no payload manifest", mutate: func(h *handBag) {
			h.tags["manifest-sha256.txt"] = "\x00delete"
		}, want: "no payload manifest"},
		{name: "payload file not in the manifest", after: func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "data", "stray.txt"), "stray")
		}, want: `payload file "data/stray.txt" is not listed in manifest-sha256.txt`},
		{name: "manifest entry missing on disk", after: func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "data", "plain.txt")); err != nil {
				t.Fatal(err)
			}
		}, want: `"data/plain.txt" is missing`},
		{name: "checksum mismatch", after: func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "data", "with space.txt"), "SPACE\n")
		}, want: `checksum of "data/with space.txt"`},
		{name: "percent not encoded", mutate: func(h *handBag) {
			h.tags["manifest-sha256.txt"] = strings.Replace(manifestOf(h.payload), "100%25.txt", "100%.txt", 1)
		}, want: "not percent-encoded"},
		{name: "newline percent-encoded in lower case is valid", mutate: func(h *handBag) {
			h.tags["manifest-sha256.txt"] = strings.Replace(manifestOf(h.payload), "a%0Ab", "a%0ab", 1)
		}, want: ""},
		{name: "path escapes the bag", mutate: func(h *handBag) {
			h.tags["manifest-sha256.txt"] = manifestOf(h.payload) + sum("x") + "  data/../../etc/passwd\n"
		}, want: `".." element`},
		{name: "payload manifest lists a tag file", mutate: func(h *handBag) {
			h.tags["manifest-sha256.txt"] = manifestOf(h.payload) + sum(h.tags["bagit.txt"]) + "  bagit.txt\n"
		}, want: `"bagit.txt" is not below data/`},
		{name: "entry listed twice", mutate: func(h *handBag) {
			h.tags["manifest-sha256.txt"] = manifestOf(h.payload) + sum("hello\n") + " data/plain.txt\n"
		}, want: `"data/plain.txt" is listed twice`},
		{name: "line without a path", mutate: func(h *handBag) {
			h.tags["manifest-sha256.txt"] = manifestOf(h.payload) + sum("x") + "\n"
		}, want: "is not \"checksum path\""},
		{name: "short checksum", mutate: func(h *handBag) {
			h.tags["manifest-sha256.txt"] = strings.Replace(manifestOf(h.payload), sum("hello\n"), sum("hello\n")[:40], 1)
		}, want: "is not a sha256 checksum"},
		{name: "wrong Payload-Oxum", mutate: func(h *handBag) {
			h.tags["bag-info.txt"] = "Payload-Oxum: 1.1\n"
		}, want: "Payload-Oxum 1.1, but the payload has"},
		{name: "Payload-Oxum twice", mutate: func(h *handBag) {
			h.tags["bag-info.txt"] += h.tags["bag-info.txt"][strings.Index(h.tags["bag-info.txt"], "Payload-Oxum"):]
		}, want: "Payload-Oxum 2 times"},
		{name: "Bagging-Date malformed", mutate: func(h *handBag) {
			h.tags["bag-info.txt"] = strings.Replace(h.tags["bag-info.txt"], "2024-05-01", "1 May 2024", 1)
		}, want: `Bagging-Date "1 May 2024"`},
		{name: "bag-info line without a colon", mutate: func(h *handBag) {
			h.tags["bag-info.txt"] += "no colon here\n"
		}, want: "has no colon"},
		{name: "tag file not in the tag manifest", mutate: func(h *handBag) {
			tm := map[string]string{"bagit.txt": h.tags["bagit.txt"], "manifest-sha256.txt": manifestOf(h.payload)}
			h.tags["tagmanifest-sha256.txt"] = manifestOf(tm)
		}, want: `tag file "bag-info.txt" is not listed in tagmanifest-sha256.txt`},
		{name: "tag manifest lists a payload file", mutate: func(h *handBag) {
			tm := map[string]string{"bagit.txt": h.tags["bagit.txt"], "bag-info.txt": h.tags["bag-info.txt"], "manifest-sha256.txt": manifestOf(h.payload), "data/plain.txt": "hello\n"}
			h.tags["tagmanifest-sha256.txt"] = manifestOf(tm)
		}, want: `tag manifest lists payload file "data/plain.txt"`},
		{name: "tag file changed after the tag manifest", after: func(t *testing.T, dir string) {
			f, err := os.OpenFile(filepath.Join(dir, "bag-info.txt"), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteString("Contact-Name: someone\n"); err != nil {
				t.Fatal(err)
			}
		}, want: `checksum of "bag-info.txt"`},
		{name: "symbolic link in the payload", after: func(t *testing.T, dir string) {
			if err := os.Symlink("/etc/passwd", filepath.Join(dir, "data", "link")); err != nil {
				t.Fatal(err)
			}
		}, want: `"data/link" in the payload is a L`},
		{name: "unknown algorithm", mutate: func(h *handBag) {
			h.tags["manifest-foo.txt"] = manifestOf(h.payload)
		}, want: `algorithm "foo" is unknown`},
		{name: "no data folder", after: func(t *testing.T, dir string) {
			if err := os.RemoveAll(filepath.Join(dir, "data")); err != nil {
				t.Fatal(err)
			}
		}, want: "data/ is missing"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := validHandBag()
			if tc.mutate != nil {
				tc.mutate(h)
			}
			dir := h.write(t)
			if tc.after != nil {
				tc.after(t, dir)
			}
			err := Validate(dir)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("valid bag reported: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("invalid bag passed; want a problem with %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("problems %q do not mention %q", err, tc.want)
			}
		})
	}
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestInfo(t *testing.T) {
	dir := validHandBag().write(t)
	info, err := Info(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := info["External-Description"]; len(got) != 1 || got[0] != "a bag written by hand" {
		t.Errorf("External-Description = %q, want the folded value joined", got)
	}
	if got := info["Bagging-Date"]; len(got) != 1 || got[0] != "2024-05-01" {
		t.Errorf("Bagging-Date = %q", got)
	}
}
