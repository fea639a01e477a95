package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-backup/custos/internal/s3server"
)

// TestRepoCacheS3: commands on an S3 repository keep its snapshot and
// index files and its tree packs under $CUSTOS_CACHE_DIR (or --cache-dir),
// and keep nothing with --no-cache; a local repository has no cache.
func TestRepoCacheS3(t *testing.T) {
	ctx := context.Background()
	srv := s3server.Start(t)
	srv.CreateBucket(t, "custos")
	srv.SetEnv(t)
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "src")
	writeRandom(t, filepath.Join(src, "f"), 100<<10)
	env := filepath.Join(dir, "env-cache")
	t.Setenv("CUSTOS_CACHE_DIR", env)
	copies := func(root string) (n int) {
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), ".") {
				n++
			}
			return nil
		})
		return n
	}
	for _, tc := range []struct {
		name, repo string
		flags      []string
		env, flag  int // copies expected under $CUSTOS_CACHE_DIR and --cache-dir
	}{
		{"env", srv.URL("custos", "env"), nil, 3, 0},
		{"flag", srv.URL("custos", "flag"), []string{"--cache-dir", filepath.Join(dir, "flag-cache")}, 0, 3},
		{"no-cache", srv.URL("custos", "none"), []string{"--no-cache"}, 0, 0},
		{"local", filepath.Join(dir, "local"), nil, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := copies(env)
			run := func(args ...string) string {
				t.Helper()
				out, _, err := runCLI(ctx, append(append([]string{"repo", "-r", tc.repo, "-p", pw}, tc.flags...), args...)...)
				if err != nil {
					t.Fatalf("%v: %v", args, err)
				}
				return out
			}
			run("init")
			run("backup", "--dataset", "d", src)
			if out := run("snapshots"); !strings.Contains(out, "d") {
				t.Fatalf("snapshots: %s", out)
			}
			// a snapshot, an index file and the pack of the trees
			if got := copies(env) - before; got != tc.env {
				t.Errorf("%d copies under $CUSTOS_CACHE_DIR, want %d", got, tc.env)
			}
			if got := copies(filepath.Join(dir, "flag-cache")); tc.flag > 0 && got != tc.flag {
				t.Errorf("%d copies under --cache-dir, want %d", got, tc.flag)
			}
		})
	}
}
