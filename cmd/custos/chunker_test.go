package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestInitChunker creates repositories with each chunker through the CLI,
// backs up into each and reads back which chunker it uses; an unknown
// chunker is refused before anything is created.
func TestInitChunker(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "src")
	writeRandom(t, filepath.Join(src, "big"), 3<<20)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"default", nil, "gear"},
		{"gear", []string{"--chunker", "gear"}, "gear"},
		{"rabin", []string{"--chunker", "rabin"}, "rabin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			repo := filepath.Join(dir, "repo-"+tc.name)
			if _, _, err := runCLI(ctx, append([]string{"repo", "init", "-r", repo, "-p", pw}, tc.args...)...); err != nil {
				t.Fatal(err)
			}
			if _, _, err := runCLI(ctx, "repo", "backup", "-r", repo, "-p", pw, "--dataset", "d", src); err != nil {
				t.Fatal(err)
			}
			out, _, err := runCLI(ctx, "repo", "stats", "-r", repo, "-p", pw, "--json")
			if err != nil {
				t.Fatal(err)
			}
			var st struct {
				Chunker string `json:"chunker"`
				Blobs   int    `json:"blobs"`
			}
			if err := json.Unmarshal([]byte(out), &st); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if st.Chunker != tc.want || st.Blobs < 3 {
				t.Fatalf("stats: chunker %q, %d blobs; want %q and the file in chunks", st.Chunker, st.Blobs, tc.want)
			}
		})
	}
	repo := filepath.Join(dir, "repo-bad")
	_, _, err := runCLI(ctx, "repo", "init", "-r", repo, "-p", pw, "--chunker", "buzhash")
	if err == nil || !strings.Contains(err.Error(), "--chunker") {
		t.Fatalf("unknown chunker: %v", err)
	}
	if _, err := os.Stat(repo); !os.IsNotExist(err) {
		t.Fatalf("a repository was created for an unknown chunker (%v)", err)
	}
}

func writeRandom(t *testing.T, p string, n int) {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
