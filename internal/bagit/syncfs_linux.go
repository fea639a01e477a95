package bagit

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncFS flushes the file system that holds root: every file and folder of
// the bag with one call.
func syncFS(root *os.Root) error {
	d, err := root.Open(".")
	if err != nil {
		return err
	}
	defer d.Close()
	return unix.Syncfs(int(d.Fd()))
}
