package repository

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/format"
)

// loadTree loads, verifies and decodes a tree blob.
func (r *Repository) loadTree(ctx context.Context, id ID) (*format.Tree, error) {
	b, err := r.loadBlob(r.cacheTreePacks(ctx), TreeBlob, id, nil)
	if err != nil {
		return nil, fmt.Errorf("load tree: %w", err)
	}
	t, err := format.DecodeTree(b)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", id, err)
	}
	return t, nil
}

// cacheTreePacks marks ctx so that a cache (backend/cache) keeps whole
// copies of the packs that hold only trees, which every walk of a
// snapshot reads (backend.CachePacks). A pack that holds file data too (a
// prune rewrote it) is read by ranges, as without a cache.
func (r *Repository) cacheTreePacks(ctx context.Context) context.Context {
	x := r.index()
	return backend.CachePacks(ctx, func(name string) bool {
		id, err := format.ParseID(name)
		return err == nil && x.TreesOnly(id)
	})
}

// savingTreePack marks ctx so that a cache keeps the pack of trees a
// writer (the blob saver, the repacker) saves with it.
func savingTreePack(ctx context.Context) context.Context {
	return backend.CachePacks(ctx, func(string) bool { return true })
}

// loadedTree is a tree loadTrees read, or why it could not.
type loadedTree struct {
	t   *format.Tree
	raw []byte // the verified plaintext, if asked for
	err error
}

// treeWorkers is how many packs of trees a local repository reads at once.
func treeWorkers() int { return max(4, runtime.GOMAXPROCS(0)) }

// loadTrees loads, verifies and decodes the trees ids, as loadTree does
// each, but by pack: the trees of one pack are read with as few requests as
// their offsets allow, several packs at once. A walk that loads a tree at a
// time waits a round trip per directory on remote storage; one that hands
// each level of the tree over at once waits about one per level. The
// result has every id, with the plaintext too if keepRaw; it returns an
// error only when ctx ends.
func (r *Repository) loadTrees(ctx context.Context, ids []ID, keepRaw bool) (map[ID]loadedTree, error) {
	out := make(map[ID]loadedTree, len(ids))
	x := r.index()
	want := map[ID][]format.PackedBlob{}
	for _, id := range ids {
		if _, ok := out[id]; ok {
			continue
		}
		pack, pb, ok := x.Lookup(format.TreeHandle(id))
		if !ok {
			err := notInIndex(TreeBlob, id)
			out[id] = loadedTree{err: fmt.Errorf("load tree: %w", err)}
			continue
		}
		out[id] = loadedTree{}
		want[pack] = append(want[pack], pb)
	}
	var mu sync.Mutex
	err := readPackSet(r.cacheTreePacks(ctx), r, want, r.readers(treeWorkers()), func(_ ID, b readBlob) error {
		var lt loadedTree
		if b.Err != nil {
			lt.err = fmt.Errorf("load tree: %w", b.Err)
		} else if lt.t, lt.err = format.DecodeTree(b.Plain); lt.err != nil {
			lt.err = fmt.Errorf("tree %s: %w", b.Entry.ID, lt.err)
		} else if keepRaw {
			lt.raw = bytes.Clone(b.Plain)
		}
		mu.Lock()
		out[b.Entry.ID] = lt
		mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, err
	}
	for id, lt := range out {
		if lt.t == nil && lt.err == nil {
			out[id] = loadedTree{err: fmt.Errorf("load tree %s: not read", id)} // cannot happen: read visits every entry
		}
	}
	return out, nil
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
	return walkTreeAt(ctx, r, prefix, id, fn)
}

// walkWholeTreeAt walks as walkTreeAt does, for walks that go into every
// folder (a recursive listing, find, a digest audit, a replica's
// verification): on remote storage the trees come through a treePrefetch,
// a level at a time, instead of a round trip per folder.
func (r *Repository) walkWholeTreeAt(ctx context.Context, prefix string, id ID, fn func(p string, n *format.Node) error) error {
	return walkWholeTreeAt(ctx, r, prefix, id, fn)
}

// treeWalker is what a walk reads of a repository: single trees, trees a
// level at a time (by pack), and how many requests the storage keeps in
// flight (0 for a local folder, which gets no reading ahead) (Repository).
type treeWalker interface {
	loadTree(ctx context.Context, id ID) (*format.Tree, error)
	treeLoader
	readers(local int) int
}

func walkTreeAt(ctx context.Context, tw treeWalker, prefix string, id ID, fn func(p string, n *format.Node) error) error {
	t, err := loadWalked(ctx, tw, prefix, id)
	if err != nil {
		return err
	}
	return walkNodes(ctx, prefix, t, tw.loadTree, fn)
}

func walkWholeTreeAt(ctx context.Context, tw treeWalker, prefix string, id ID, fn func(p string, n *format.Node) error) error {
	t, err := loadWalked(ctx, tw, prefix, id)
	if err != nil {
		return err
	}
	load, stop := loadAhead(ctx, tw, t)
	defer stop()
	return walkNodes(ctx, prefix, t, load, fn)
}

// loadAhead returns how a walk into every folder below root gets its
// trees: on remote storage through a treePrefetch, which stop ends; on a
// local folder one at a time, as reached (a local read is cheap, and trees
// held ahead would add to the peak memory of large trees).
func loadAhead(ctx context.Context, tw treeWalker, root *format.Tree) (load treeLoadFunc, stop func()) {
	if tw.readers(0) == 0 {
		return tw.loadTree, func() {}
	}
	p := startTreePrefetch(ctx, tw, tw.loadTree, root, treePrefetchBudget)
	return p.take, p.stop
}

// treePrefetchBudget bounds the nodes of trees loaded ahead of a walk and
// not yet walked (about 200 bytes each in memory).
const treePrefetchBudget = 1 << 18

type treeLoadFunc func(ctx context.Context, id ID) (*format.Tree, error)

// loadWalked loads the tree of the folder prefix, its error naming the
// folder.
func loadWalked(ctx context.Context, tw treeWalker, prefix string, id ID) (*format.Tree, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t, err := tw.loadTree(ctx, id)
	if err != nil && prefix != "" {
		return nil, fmt.Errorf("%s: %w", prefix, err)
	}
	return t, err
}

// walkNodes calls fn for the nodes of t and, depth first, below them,
// loading each subtree with load.
func walkNodes(ctx context.Context, prefix string, t *format.Tree, load treeLoadFunc, fn func(p string, n *format.Node) error) error {
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
			if err := ctx.Err(); err != nil {
				return err
			}
			sub, err := load(ctx, n.Subtree)
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			if err := walkNodes(ctx, p, sub, load, fn); err != nil {
				return err
			}
		}
	}
	return nil
}
