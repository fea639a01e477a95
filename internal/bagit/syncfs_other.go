//go:build !linux

package bagit

import (
	"errors"
	"os"
)

// syncFS is not available here: Commit syncs each file and folder.
func syncFS(*os.Root) error { return errors.ErrUnsupported }
