package metadata

import (
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestMatcher(t *testing.T) {
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"*", "a/b/c/d", true},
		{"a/b/c", "a/b/c", true},
		{"a/b/c", "a/b/c/d/e", true}, // below a matched name
		{"a/b/c", "a/b/cd", false},
		{"a/b", "a/b/c", true},
		{"a", "a/b/c", true},
		{"a/*/c", "a/b/c", true},
		{"a/*/c", "a/b/x/c", false}, // "*" does not cross "/"
		{"a/b/*", "a/b/c/d", true},
		{"a/b/c/d/e", "a/b/c", false},
		{"a/b/[cd]", "a/b/d", true},
		{"a/b/?", "a/b/cc", false},
		{"a/b/c/", "a/b/c/x", true},
	}
	for _, tc := range tests {
		m, err := newMatcher(tc.pattern)
		if err != nil {
			t.Fatal(err)
		}
		if got := m.match(tc.name); got != tc.want {
			t.Errorf("match(%q, %q) = %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}

func TestLiteralPrefix(t *testing.T) {
	tests := []struct {
		pattern, want string
		literal       bool
	}{
		{"src/ds/atom", "src/ds/atom", true},
		{"src/ds/a*", "src/ds/a", false},
		{"src/d?/x", "src/d", false},
		{"src/[ab]", "src/", false},
		{`src/a\*`, "src/a", false},
		{"*", "", false},
	}
	for _, tc := range tests {
		got, lit := literalPrefix(tc.pattern)
		if got != tc.want || lit != tc.literal {
			t.Errorf("literalPrefix(%q) = %q, %v; want %q, %v", tc.pattern, got, lit, tc.want, tc.literal)
		}
	}
}

func TestRevTimeSortsNewestFirst(t *testing.T) {
	times := []time.Time{
		time.Unix(0, 1), t0, t0.Add(time.Nanosecond), t0.Add(time.Hour),
		time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	var enc []string
	for _, ts := range times {
		s := revTime(ts)
		if len(s) != revTimeWidth {
			t.Fatalf("revTime(%v) = %q, want %d digits", ts, s, revTimeWidth)
		}
		back, err := parseRevTime(s)
		if err != nil || !back.Equal(ts) {
			t.Fatalf("parseRevTime(%q) = %v, %v; want %v", s, back, err, ts)
		}
		enc = append(enc, s)
	}
	for i := 1; i < len(enc); i++ {
		if enc[i] >= enc[i-1] {
			t.Fatalf("%v encodes to %q, not before older %q", times[i], enc[i], enc[i-1])
		}
	}
}

// Atom names with "/" must not collide with the time/backup suffix, and
// all versions of one atom must sort together, before its subtree.
func TestAtomKeys(t *testing.T) {
	k := keys{p: "/custos/"}
	names := []string{"s/d/a", "s/d/a/b", "s/d/a b", "s/d/a/0000000000000000001/x", "s/d/a-"}
	var all []string
	owner := map[string]string{}
	for _, n := range names {
		for _, ts := range []time.Time{t0, t0.Add(time.Hour)} {
			for _, gen := range []string{"", "0123abcd"} {
				key := k.atom(n, ts, "bk/1", gen)
				name, gotTS, id, gotGen, err := k.parseAtomKey(key)
				if err != nil || name != n || !gotTS.Equal(ts) || id != "bk/1" || gotGen != gen {
					t.Fatalf("parseAtomKey(%q) = %q %v %q %q %v", key, name, gotTS, id, gotGen, err)
				}
				all = append(all, key)
				owner[key] = n
			}
		}
	}
	sort.Strings(all)
	seen := map[string]bool{}
	prev := ""
	for _, key := range all {
		n := owner[key]
		if n != prev && seen[n] {
			t.Fatalf("versions of %q are not contiguous in key order", n)
		}
		seen[n] = true
		prev = n
	}
	// Versions of "s/d/a" lie inside [name+sep, name+"\x01"), which is
	// what find jumps past.
	lo, hi := k.atomNS()+"s/d/a"+sep, k.atomNS()+"s/d/a\x01"
	for _, key := range all {
		in := key >= lo && key < hi
		if in != (owner[key] == "s/d/a") {
			t.Fatalf("key %q (atom %q) in version range of s/d/a: %v", key, owner[key], in)
		}
	}
}

func TestSplitAtomName(t *testing.T) {
	s, d, a, ok := SplitAtomName("src/ds/dir/file")
	if !ok || s != "src" || d != "ds" || a != "dir/file" {
		t.Fatalf("SplitAtomName = %q %q %q %v", s, d, a, ok)
	}
	for _, bad := range []string{"src/ds", "src//a", "/ds/a", "src/ds/"} {
		if _, _, _, ok := SplitAtomName(bad); ok {
			t.Errorf("SplitAtomName(%q) ok", bad)
		}
	}
	if AtomName("src", "ds", "dir/file") != "src/ds/dir/file" {
		t.Fatal("AtomName")
	}
}

func TestSpoolOrderAndRecovery(t *testing.T) {
	dir := t.TempDir()
	var depths []int
	sp, err := openSpool(dir, func(d int) { depths = append(depths, d) })
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range []string{"first", "second", "third"} {
		if err := sp.add(spoolRecord{Backup: mkBackup(id, "h", t0.Add(time.Duration(i))), Dataset: mkDataset("s", "d", "a")}); err != nil {
			t.Fatal(err)
		}
	}
	// A crash mid-write leaves a temp file; it must be ignored and removed.
	if err := os.WriteFile(filepath.Join(dir, ".tmp-123"), []byte("{half"), 0o600); err != nil {
		t.Fatal(err)
	}
	name, rec, err := sp.oldest()
	if err != nil || rec.Backup.ID != "first" {
		t.Fatalf("oldest = %v %v", rec, err)
	}
	if err := sp.done(name); err != nil {
		t.Fatal(err)
	}

	sp2, err := openSpool(dir, nil) // a new process
	if err != nil {
		t.Fatal(err)
	}
	if sp2.depth() != 2 {
		t.Fatalf("reopened depth %d, want 2", sp2.depth())
	}
	if _, err := os.Stat(filepath.Join(dir, ".tmp-123")); !os.IsNotExist(err) {
		t.Fatalf("temp file survived reopen: %v", err)
	}
	if err := sp2.add(spoolRecord{Backup: mkBackup("fourth", "h", t0), Dataset: mkDataset("s", "d", "a")}); err != nil {
		t.Fatal(err)
	}
	var order []string
	for {
		name, rec, err := sp2.oldest()
		if err != nil {
			t.Fatal(err)
		}
		if rec == nil {
			break
		}
		order = append(order, rec.Backup.ID)
		if err := sp2.done(name); err != nil {
			t.Fatal(err)
		}
	}
	if want := "second third fourth"; strings.Join(order, " ") != want {
		t.Fatalf("flush order %q, want %q", strings.Join(order, " "), want)
	}
	if want := []int{0, 1, 2, 3, 2}; !slices.Equal(depths, want) {
		t.Fatalf("depth hook saw %v, want %v", depths, want)
	}
}
