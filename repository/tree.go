package repository

import (
	"context"
	"errors"
	"fmt"

	"github.com/custos-backup/custos/repository/format"
)

// loadTree loads, verifies and decodes a tree blob.
func (r *Repository) loadTree(ctx context.Context, id ID) (*format.Tree, error) {
	b, err := r.loadBlob(ctx, TreeBlob, id, nil)
	if err != nil {
		return nil, fmt.Errorf("load tree: %w", err)
	}
	t, err := format.DecodeTree(b)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", id, err)
	}
	return t, nil
}

// walkTree calls fn for every node below the tree id in depth-first order
// (a directory before its children), with slash paths relative to the
// tree's root. fn returning errSkipSubtree skips a directory's children.
func (r *Repository) walkTree(ctx context.Context, id ID, fn func(p string, n *format.Node) error) error {
	return r.walkTreeAt(ctx, "", id, fn)
}

// errSkipSubtree tells walkTree not to descend into a directory.
var errSkipSubtree = errors.New("skip subtree")

func (r *Repository) walkTreeAt(ctx context.Context, prefix string, id ID, fn func(p string, n *format.Node) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t, err := r.loadTree(ctx, id)
	if err != nil {
		if prefix != "" {
			return fmt.Errorf("%s: %w", prefix, err)
		}
		return err
	}
	for i := range t.Nodes {
		n := &t.Nodes[i]
		p := n.Name
		if prefix != "" {
			p = prefix + "/" + n.Name
		}
		err := fn(p, n)
		if errors.Is(err, errSkipSubtree) {
			continue
		}
		if err != nil {
			return err
		}
		if n.Type == format.NodeDir {
			if err := r.walkTreeAt(ctx, p, n.Subtree, fn); err != nil {
				return err
			}
		}
	}
	return nil
}
