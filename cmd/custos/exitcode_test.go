package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/custos-backup/custos/repository"
)

// TestExitCodes runs real commands against a real repository and checks
// the exit status each failure maps to.
func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	wrong := filepath.Join(dir, "wrong")
	repo := filepath.Join(dir, "repo")
	for p, s := range map[string]string{pw: "right\n", wrong: "wrong\n"} {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	if _, _, err := runCLI(ctx, "repo", "init", "-r", repo, "-p", pw); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want int
	}{
		{"ok", []string{"repo", "snapshots", "-r", repo, "-p", pw}, exitOK},
		{"password from a command", []string{"repo", "snapshots", "-r", repo, "--password-command", "cat " + pw}, exitOK},
		{"wrong password", []string{"repo", "snapshots", "-r", repo, "-p", wrong}, exitWrongPassword},
		{"wrong password from a command", []string{"repo", "snapshots", "-r", repo, "--password-command", "echo nope"}, exitWrongPassword},
		{"failing password command", []string{"repo", "snapshots", "-r", repo, "--password-command", "exit 7"}, exitFailure},
		{"no repository", []string{"repo", "snapshots", "-r", filepath.Join(dir, "none"), "-p", pw}, exitNoRepository},
		{"a bad flag", []string{"repo", "snapshots", "--no-such-flag"}, exitFailure},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runCLI(ctx, tc.args...)
			if got := exitCode(ctx, err); got != tc.want {
				t.Errorf("exit status %d (err %v), want %d", got, err, tc.want)
			}
		})
	}

	t.Run("mapping", func(t *testing.T) {
		canceled, cancel := context.WithCancel(ctx)
		cancel()
		for _, tc := range []struct {
			ctx  context.Context
			err  error
			want int
		}{
			{ctx, nil, exitOK},
			{ctx, errors.New("x"), exitFailure},
			{ctx, fmt.Errorf("open: %w", repository.ErrWrongPassword), exitWrongPassword},
			{ctx, fmt.Errorf("open: %w", repository.ErrNotInitialized), exitNoRepository},
			{ctx, fmt.Errorf("backup: %w", withExitCode(exitPartial, errors.New("3 files"))), exitPartial},
			{canceled, context.Canceled, exitInterrupted},
		} {
			if got := exitCode(tc.ctx, tc.err); got != tc.want {
				t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
			}
		}
	})
}
