package s3server

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestInstallOnce runs install from several goroutines with a stand-in `go`
// command (a real shell script) and checks it is built once, under the lock,
// and lands where Binary looks.
func TestInstallOnce(t *testing.T) {
	tools := t.TempDir()
	calls := filepath.Join(t.TempDir(), "calls")
	script := `#!/bin/sh
# stand-in for "go install MODULE@VERSION": record the call, write a binary.
echo "$*" >> "` + calls + `"
sleep 0.2
printf '#!/bin/sh\necho fake versitygw\n' > "$GOBIN/versitygw"
chmod 755 "$GOBIN/versitygw"
`
	if err := os.WriteFile(filepath.Join(tools, "go"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", tools+string(os.PathListSeparator)+os.Getenv("PATH"))
	dir := filepath.Join(t.TempDir(), "bin", "versitygw@"+Version)

	var wg sync.WaitGroup
	paths := make([]string, 4)
	errs := make([]error, 4)
	for i := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			paths[i], errs[i] = install(dir)
		}()
	}
	wg.Wait()
	for i := range paths {
		if errs[i] != nil {
			t.Fatalf("install: %v", errs[i])
		}
		if paths[i] != filepath.Join(dir, "versitygw") {
			t.Fatalf("install = %q, want %q", paths[i], filepath.Join(dir, "versitygw"))
		}
	}
	b, err := os.ReadFile(calls)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(b)); got != "install "+module+"@"+Version {
		t.Fatalf("go was called as %q, want exactly one install of %s@%s", got, module, Version)
	}
	if err := executable(paths[0]); err != nil {
		t.Fatal(err)
	}
	// No temp folders left next to the binary's folder.
	entries, _ := os.ReadDir(filepath.Dir(dir))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".versitygw-install-") {
			t.Errorf("install left %s behind", e.Name())
		}
	}
}

func TestInstallFailureIsClear(t *testing.T) {
	tools := t.TempDir()
	script := "#!/bin/sh\necho 'go: network unreachable' >&2\nexit 1\n"
	if err := os.WriteFile(filepath.Join(tools, "go"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", tools)
	_, err := install(filepath.Join(t.TempDir(), "versitygw@"+Version))
	if err == nil || !strings.Contains(err.Error(), "network unreachable") || !strings.Contains(err.Error(), module) {
		t.Fatalf("install with a failing go = %v, want an error with go's output", err)
	}
}
