package main

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestBackupPartialExitStatus backs up a folder holding a file its reader
// cannot open: the snapshot is saved with the rest, the file is named in a
// warning, and the exit status is 3, as restic's. Root reads every file,
// so as root the backup runs as user nobody (a real process with other
// credentials); otherwise in this process.
func TestBackupPartialExitStatus(t *testing.T) {
	dir := t.TempDir()
	// t.TempDir's folders are private to this user; nobody must reach
	// the source, the repository and the binary.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	src, repo := filepath.Join(dir, "src"), filepath.Join(dir, "repo")
	pw := filepath.Join(dir, "pw")
	for p, body := range map[string]string{"src/ok.txt": "readable\n", "src/sub/also.txt": "readable too\n", "src/sub/secret.txt": "no one may read this\n", "pw": "partial test\n"} {
		p = filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(src, "sub", "secret.txt"), 0); err != nil {
		t.Fatal(err)
	}
	args := []string{"repo", "backup", "-r", repo, "-p", pw, "--dataset", "t/partial", src}
	var out string
	var code int
	if os.Geteuid() == 0 {
		// The test binary stands in for custos (TestMain), copied where
		// nobody may run it.
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		bin := filepath.Join(dir, "custos")
		copyFile(t, exe, bin, 0o755)
		if err := os.Chmod(pw, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(repo, 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(repo, 0o777); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "repo", "init", "-r", repo, "-p", pw)
		cmd.Env = append(os.Environ(), "CUSTOS_TEST_AS_CUSTOS=1", "HOME="+dir)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("init as nobody: %v\n%s", err, b)
		}
		cmd = exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "CUSTOS_TEST_AS_CUSTOS=1", "HOME="+dir)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		b, err := cmd.CombinedOutput()
		out = string(b)
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
	} else {
		ctx := t.Context()
		if _, _, err := runCLI(ctx, "repo", "init", "-r", repo, "-p", pw); err != nil {
			t.Fatal(err)
		}
		o, e, err := runCLI(ctx, args...)
		out = o + e
		if err != nil {
			out += err.Error()
		}
		code = exitCode(ctx, err)
	}
	if code != exitPartial {
		t.Errorf("exit status %d, want %d (partial)\n%s", code, exitPartial, out)
	}
	if !strings.Contains(out, "sub/secret.txt") || !strings.Contains(out, "could not be read") {
		t.Errorf("the output does not name the unreadable file:\n%s", out)
	}
	// The rest was saved: restore it as root (or this user) and compare.
	target := filepath.Join(dir, "out")
	if _, _, err := runCLI(t.Context(), "repo", "restore", "-r", repo, "-p", pw, "--snapshot", "latest", "--dataset", "t/partial", "--target", target); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{"ok.txt": "readable\n", "sub/also.txt": "readable too\n"} {
		got, err := os.ReadFile(filepath.Join(target, p))
		if err != nil || string(got) != want {
			t.Errorf("restored %s: %q %v", p, got, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(target, "sub", "secret.txt")); err == nil {
		t.Error("the unreadable file is in the snapshot")
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
