package etcdserver

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestEmbeddedServesOnlyItsUser: the server listens on a unix socket in a
// folder only its user may enter, and on no TCP client port, not even the
// one an older version recorded for this data directory. A client that
// goes through the socket works.
func TestEmbeddedServesOnlyItsUser(t *testing.T) {
	long := filepath.Join(t.TempDir(), strings.Repeat("d", 120))
	for _, tc := range []struct{ name, dir string }{
		{"short path", t.TempDir()},
		{"path too long for a socket", long},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.MkdirAll(tc.dir, 0o755); err != nil {
				t.Fatal(err)
			}
			// The ports an older version served and recorded.
			old, err := freePort()
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(tc.dir, portsFile), []byte(fmt.Sprintf("%d %d\n", old, old+1)), 0o600); err != nil {
				t.Fatal(err)
			}
			e, err := StartEmbedded(ctxT(t), tc.dir, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			ep := e.Endpoints()[0]
			sock, ok := strings.CutPrefix(ep, "unix://")
			if !ok {
				t.Fatalf("endpoint %s is not a unix socket", ep)
			}
			if len(sock) > maxSocketPath {
				t.Errorf("socket path of %d bytes: %s", len(sock), sock)
			}
			for _, d := range []string{filepath.Dir(sock), tc.dir} {
				fi, err := os.Stat(d)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != 0o700 {
					t.Errorf("%s has mode %o, want 0700", d, fi.Mode().Perm())
				}
			}
			put(t, ep, "k", "v")
			put(t, ep, "k", "")
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", old))
			if err == nil {
				c.Close()
				t.Fatalf("the old client port %d answers", old)
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("the old client port %d: %v, want connection refused", old, err)
			}
			if _, err := os.Stat(filepath.Join(tc.dir, portsFile)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the old ports file is still there: %v", err)
			}
		})
	}
}

// TestPrivateDirRefusesOthers: a socket folder that is not a folder is
// refused, and one with a wider mode is narrowed.
func TestPrivateDirRefusesOthers(t *testing.T) {
	dir := t.TempDir()
	wide := filepath.Join(dir, "wide")
	if err := os.Mkdir(wide, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(wide, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := privateDir(wide); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(wide); fi.Mode().Perm() != 0o700 {
		t.Errorf("mode %o, want 0700", fi.Mode().Perm())
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(wide, link); err != nil {
		t.Fatal(err)
	}
	if err := privateDir(link); err == nil {
		t.Error("a symlink was taken as the socket folder")
	}
}
