//go:build !unix

package etcdserver

import (
	"fmt"
	"os"
)

// lockDir without flock: an exclusive create, removed on unlock. A crash
// leaves the file behind and a person must remove it.
func lockDir(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if os.IsExist(err) {
		return nil, ErrLocked
	}
	if err != nil {
		return nil, fmt.Errorf("create lock file: %w", err)
	}
	return f, nil
}

func unlockDir(f *os.File) {
	if f != nil {
		_ = f.Close()
		_ = os.Remove(f.Name())
	}
}

// ownerOf is unknown without unix file owners.
func ownerOf(os.FileInfo) (int, bool) { return 0, false }
