//go:build !linux

package local

import (
	"errors"
	"os"
)

// errDirectRefused is never returned where O_DIRECT is not used.
var errDirectRefused = errors.New("direct I/O refused")

// setDirect reports that direct I/O is not available: packs are written
// through the page cache on systems other than Linux.
func setDirect(*os.File, bool) error { return errors.ErrUnsupported }
