package repository

import (
	"context"
	"sync"

	"github.com/custos-backup/custos/repository/format"
)

// treePrefetch loads the trees below a root ahead of a walk that wants
// them one directory at a time, in an order of its own (backup's walkers
// and the parent snapshot): a level at a time, by pack (loadTrees), so
// that on remote storage the walk waits about a round trip per level of
// the tree rather than one per directory.
//
// Every take returns what loadTree would (a tree that cannot be read is
// loadTree's error), and none waits on anything but a batch being read or
// a prefetch still going. Memory is bounded: once the trees loaded and not
// yet taken hold budget nodes, the prefetch stops for good, and from then
// on every take of a tree it has not started loads that tree itself, one
// request, as a walk without a prefetch does.
type treePrefetch struct {
	trees  treeLoader
	one    treeLoadFunc
	budget int

	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex
	slots map[ID]*treeSlot
	held  int  // nodes of loaded trees not yet taken
	ahead bool // still going: a take of a tree not yet named waits
	// progress is closed (and replaced) whenever slots gain trees or
	// ahead turns false.
	progress chan struct{}
}

// treeSlot is one tree the prefetch means to load. refs counts the
// directories of the loaded trees that name it (equal subtrees are loaded
// once); the slot is dropped when all of them have taken it.
type treeSlot struct {
	loaded  chan struct{} // closed when t, err and direct are set
	started bool          // its batch is being read (or was)
	t       *format.Tree
	err     error
	direct  bool // not read by the prefetch: the taker loads it itself
	refs    int
}

// treeBatch bounds the trees asked for in one loadTrees call, so that a
// wide level starts arriving before all of it is read.
const treeBatch = 1024

// startTreePrefetch starts loading the subtrees of root (whose own tree the
// caller has) in the background. stop ends it; takes after stop load
// directly what it did not read.
func startTreePrefetch(ctx context.Context, trees treeLoader, one treeLoadFunc, root *format.Tree, budget int) *treePrefetch {
	ctx, cancel := context.WithCancel(ctx)
	p := &treePrefetch{
		trees: trees, one: one, budget: budget, cancel: cancel, done: make(chan struct{}),
		slots: map[ID]*treeSlot{}, ahead: true, progress: make(chan struct{}),
	}
	go p.run(ctx, root)
	return p
}

func (p *treePrefetch) stop() {
	p.cancel()
	<-p.done
}

// signal closes *ch and makes a new one: every waiter on the old one wakes.
func signal(ch *chan struct{}) {
	close(*ch)
	*ch = make(chan struct{})
}

func (p *treePrefetch) run(ctx context.Context, root *format.Tree) {
	defer close(p.done)
	defer p.finish()
	level := p.subtrees(nil, root)
	for len(level) > 0 {
		var next []ID
		for len(level) > 0 {
			n := min(len(level), treeBatch)
			batch := level[:n]
			level = level[n:]
			slots := p.start(batch)
			if slots == nil {
				return
			}
			loaded, ok := p.load(ctx, batch, slots)
			if !ok {
				return
			}
			for _, t := range loaded {
				next = p.subtrees(next, t)
			}
		}
		level = next
	}
}

// finish hands every tree the prefetch will not read to its takers.
func (p *treePrefetch) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ahead = false
	for _, s := range p.slots {
		if !s.started {
			s.started, s.direct = true, true
			close(s.loaded)
		}
	}
	signal(&p.progress)
}

// subtrees appends the subtrees of t not yet named to ids, and counts one
// more reference to those that are.
func (p *treePrefetch) subtrees(ids []ID, t *format.Tree) []ID {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range t.Nodes {
		n := &t.Nodes[i]
		if n.Type != format.NodeDir {
			continue
		}
		if s := p.slots[n.Subtree]; s != nil {
			s.refs++
			continue
		}
		p.slots[n.Subtree] = &treeSlot{loaded: make(chan struct{}), refs: 1}
		ids = append(ids, n.Subtree)
	}
	signal(&p.progress)
	return ids
}

// start marks a batch as being read and returns its slots, unless the
// trees held are at the budget: then the prefetch stops (nil).
func (p *treePrefetch) start(batch []ID) []*treeSlot {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held >= p.budget {
		return nil
	}
	slots := make([]*treeSlot, len(batch))
	for i, id := range batch {
		slots[i] = p.slots[id] // slots stay until loaded
		slots[i].started = true
	}
	return slots
}

// load reads one batch and fills its slots. A batch that fails as a whole
// (cancelled, or the backend gave up) leaves its trees to their takers.
func (p *treePrefetch) load(ctx context.Context, batch []ID, slots []*treeSlot) ([]*format.Tree, bool) {
	res, err := p.trees.loadTrees(ctx, batch, false)
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*format.Tree
	for i, id := range batch {
		s := slots[i]
		lt, ok := res[id]
		switch {
		case err != nil || !ok:
			s.direct = true
		case lt.err != nil:
			s.err = lt.err
		default:
			s.t = lt.t
			p.held += len(lt.t.Nodes)
			out = append(out, lt.t)
		}
		close(s.loaded)
	}
	return out, err == nil
}

// take returns the tree id, as loadTree would.
func (p *treePrefetch) take(ctx context.Context, id ID) (*format.Tree, error) {
	p.mu.Lock()
	for {
		if s := p.slots[id]; s != nil {
			s.refs--
			p.mu.Unlock()
			select {
			case <-s.loaded:
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
			// Dropped once loaded and taken by every directory naming it
			// (a slot leaves the map only loaded, so that start and finish
			// find every slot a taker may wait on).
			p.mu.Lock()
			if s.refs <= 0 && p.slots[id] == s {
				delete(p.slots, id)
				if s.t != nil {
					p.held -= len(s.t.Nodes)
				}
			}
			p.mu.Unlock()
			if s.direct {
				return p.one(ctx, id)
			}
			return s.t, s.err
		}
		if !p.ahead {
			p.mu.Unlock()
			return p.one(ctx, id)
		}
		progress := p.progress
		p.mu.Unlock()
		select {
		case <-progress:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
		p.mu.Lock()
	}
}
