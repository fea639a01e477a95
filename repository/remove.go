package repository

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/custos-backup/custos/repository/backend"
	"golang.org/x/sync/errgroup"
)

// removeEach calls remove for 0 to n-1, limit calls at a time: on remote
// storage each removal is a round trip or two, and a prune after a large
// forget removes thousands of packs, a forget of a repository shared by
// many datasets hundreds of snapshots. The first failure stops it and is
// returned: the calls already started finish, none starts after it.
func removeEach(ctx context.Context, n, limit int, remove func(ctx context.Context, i int) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(limit)
	for i := range n {
		if gctx.Err() != nil {
			break
		}
		// ctx, not gctx: a removal under way is not cut off by another's
		// failure.
		g.Go(func() error { return remove(ctx, i) })
	}
	return g.Wait()
}

// removeFiles removes the objects hs with as many requests in flight as
// the storage takes (removeEach). removed(i) is called, one call at a
// time, for each object gone (a missing one counts as gone); an error
// names its object.
func (r *Repository) removeFiles(ctx context.Context, hs []backend.Handle, removed func(i int)) error {
	var mu sync.Mutex
	return removeEach(ctx, len(hs), r.readers(4), func(ctx context.Context, i int) error {
		if err := r.be.Remove(ctx, hs[i]); err != nil && !errors.Is(err, backend.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", hs[i], err)
		}
		mu.Lock()
		removed(i)
		mu.Unlock()
		return nil
	})
}
