package repository

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/custos-backup/custos/repository/format"
)

// Entry is one node of a snapshot's tree, as listings show it.
type Entry struct {
	Path       string    `json:"path"` // slash path from the snapshot's root
	Type       string    `json:"type"` // file, dir, symlink, fifo, chardev, blockdev, socket
	Mode       uint32    `json:"mode"`
	Size       uint64    `json:"size"`
	MTime      time.Time `json:"mtime"`
	LinkTarget string    `json:"link_target,omitempty"`
	// SHA256 is the whole-file digest recorded at ingest (regular files).
	SHA256 string `json:"sha256,omitempty"`
}

func entryOf(p string, n *format.Node) Entry {
	e := Entry{Path: p, Type: n.Type.String(), Mode: n.Mode, Size: n.Size, MTime: time.Unix(0, n.MTime).UTC(), LinkTarget: n.LinkTarget}
	if n.Type == format.NodeFile && n.Digest != (ID{}) {
		e.SHA256 = n.Digest.String()
	}
	return e
}

// List calls fn for the nodes of snap under dir ("" or "/" is the root),
// depth first, a directory before its children. With recursive false only
// dir's direct children are listed. An unknown dir is an error naming it.
func (r *Repository) List(ctx context.Context, snap *Snapshot, dir string, recursive bool, fn func(Entry) error) error {
	return list(ctx, r, snap, dir, recursive, fn)
}

func list(ctx context.Context, tw treeWalker, snap *Snapshot, dir string, recursive bool, fn func(Entry) error) error {
	dir = strings.Trim(path.Clean("/"+dir), "/")
	root := snap.Tree
	if dir != "" {
		found := false
		err := walkTreeAt(ctx, tw, "", snap.Tree, func(p string, n *format.Node) error {
			switch {
			case p == dir && n.Type == format.NodeDir:
				root, found = n.Subtree, true
				return errStopWalk
			case p == dir:
				return fmt.Errorf("%s is a %s, not a folder", dir, n.Type)
			case strings.HasPrefix(dir, p+"/") && n.Type == format.NodeDir:
				return nil
			}
			return errSkipSubtree
		})
		if err != nil && !errors.Is(err, errStopWalk) {
			return fmt.Errorf("snapshot %s: %w", snap.ID.Short(), err)
		}
		if !found {
			return fmt.Errorf("snapshot %s: no folder %q", snap.ID.Short(), dir)
		}
	}
	walk := walkTreeAt
	if recursive {
		walk = walkWholeTreeAt
	}
	err := walk(ctx, tw, dir, root, func(p string, n *format.Node) error {
		if err := fn(entryOf(p, n)); err != nil {
			return err
		}
		if !recursive {
			return errSkipSubtree
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", snap.ID.Short(), err)
	}
	return nil
}

// errStopWalk ends a walk early without an error.
var errStopWalk = errors.New("stop walk")

// Find calls fn for every node of snap whose base name, or whole path,
// matches the glob pattern (path.Match syntax).
func (r *Repository) Find(ctx context.Context, snap *Snapshot, pattern string, fn func(Entry) error) error {
	return find(ctx, r, snap, pattern, fn)
}

func find(ctx context.Context, tw treeWalker, snap *Snapshot, pattern string, fn func(Entry) error) error {
	if _, err := path.Match(pattern, ""); err != nil {
		return fmt.Errorf("pattern %q: %w", pattern, err)
	}
	err := walkWholeTreeAt(ctx, tw, "", snap.Tree, func(p string, n *format.Node) error {
		base, _ := path.Match(pattern, n.Name)
		full, _ := path.Match(pattern, p)
		if base || full {
			return fn(entryOf(p, n))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", snap.ID.Short(), err)
	}
	return nil
}
