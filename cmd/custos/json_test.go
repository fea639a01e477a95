package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var snakeKey = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// checkKeys walks a JSON document and reports every key that is not
// snake_case, and every duration without its unit in the key.
func checkKeys(t *testing.T, where string, v any, path string) {
	t.Helper()
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if !snakeKey.MatchString(k) {
				t.Errorf("%s: key %s.%s is not snake_case", where, path, k)
			}
			if k == "duration" || k == "timeout" || strings.HasSuffix(k, "_duration") {
				t.Errorf("%s: key %s.%s is a duration without a unit", where, path, k)
			}
			checkKeys(t, where, x, path+"."+k)
		}
	case []any:
		for _, x := range v {
			checkKeys(t, where, x, path+"[]")
		}
	}
}

// TestJSONKeys runs every repository command that prints JSON against a
// real repository and checks the keys of what it prints.
func TestJSONKeys(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	repo := filepath.Join(dir, "repo")
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	for p, s := range map[string]string{pw: "pw\n", filepath.Join(src, "a"): "hello"} {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r := []string{"-r", repo, "-p", pw}
	if _, _, err := runCLI(ctx, append([]string{"repo", "init"}, r...)...); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"backup", "--dataset", "t/a", "--json", src},
		{"backup", "--dataset", "t/a", "--json", src},
		{"snapshots", "--json"},
		{"stats", "--json"},
		{"check", "--json", "--read-data"},
		{"forget", "--keep-last", "1", "--json"},
		{"prune", "--json"},
	} {
		out, _, err := runCLI(ctx, append(append([]string{"repo"}, args...), r...)...)
		if err != nil {
			t.Fatalf("repo %s: %v", strings.Join(args, " "), err)
		}
		var doc any
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			t.Fatalf("repo %s: output is not JSON: %v\n%s", strings.Join(args, " "), err, out)
		}
		checkKeys(t, "repo "+args[0], doc, "")
	}
}
