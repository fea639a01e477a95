package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-backup/custos/internal/bagitcheck"
)

// TestExportCommand runs "custos backup" and then "custos export --bagit"
// through the cobra root, and validates every bag it reports.
func TestExportCommand(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	writeFiles(t, dir, statusConfig)
	writeFiles(t, dir, map[string]string{"data/docs/été 100%.txt": "odd name\n"})
	cfg := filepath.Join(dir, "agent.yml")
	if _, stderr, err := runCLI(ctx, "backup", "-c", cfg); err != nil {
		t.Fatalf("backup: %v\n%s", err, stderr)
	}
	out := filepath.Join(dir, "bags")
	stdout, stderr, err := runCLI(ctx, "export", "-c", cfg, "--bagit", "*", out, "--json")
	if err != nil {
		t.Fatalf("export: %v\n%s", err, stderr)
	}
	var bags []exportedJSON
	if err := json.Unmarshal([]byte(stdout), &bags); err != nil {
		t.Fatalf("export --json printed %q: %v", stdout, err)
	}
	atoms := map[string]bool{}
	for _, b := range bags {
		atoms[b.Atom] = true
		if err := bagitcheck.Validate(b.Path); err != nil {
			t.Errorf("bag of %s: %v", b.Atom, err)
		}
	}
	if len(bags) != 2 || !atoms["files/docs/docs"] || !atoms["db/main/main"] {
		t.Fatalf("exported %+v, want files/docs/docs and db/main/main", bags)
	}
	got, err := os.ReadFile(filepath.Join(out, filepath.Base(bagPath(bags, "files/docs/docs")), "data", "docs", "été 100%.txt"))
	if err != nil || string(got) != "odd name\n" {
		t.Errorf("payload file with an odd name: %q, %v", got, err)
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no match", []string{"export", "-c", cfg, "--bagit", "nothing/*", filepath.Join(dir, "other")}, "no atom in the catalog matches"},
		{"no pattern", []string{"export", "-c", cfg, filepath.Join(dir, "other")}, "--bagit"},
		{"bag exists", []string{"export", "-c", cfg, "--bagit", "db", out}, "already exists"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runCLI(ctx, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("export: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// exportedJSON is what export --json prints per bag (the fields read here).
type exportedJSON struct {
	Atom  string `json:"atom"`
	Path  string `json:"path"`
	Files int    `json:"files"`
}

func bagPath(bags []exportedJSON, atom string) string {
	for _, b := range bags {
		if b.Atom == atom {
			return b.Path
		}
	}
	return ""
}
