package repository

import "context"

// background is one fetch running on a goroutine of its own, to be waited
// for or abandoned. Opening a repository derives the key from the password,
// which takes about as long as a few round trips to remote storage; what
// needs no key (listings, the stored bytes of index and snapshot files) is
// fetched meanwhile.
type background[T any] struct {
	cancel context.CancelFunc
	done   chan struct{}
	v      T
	err    error
}

func startBackground[T any](ctx context.Context, fetch func(context.Context) (T, error)) *background[T] {
	ctx, cancel := context.WithCancel(ctx)
	b := &background[T]{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(b.done)
		b.v, b.err = fetch(ctx)
	}()
	return b
}

// wait returns the fetch's result once it has ended, or ctx's cause.
func (b *background[T]) wait(ctx context.Context) (T, error) {
	select {
	case <-b.done:
		return b.v, b.err
	case <-ctx.Done():
		var zero T
		return zero, context.Cause(ctx)
	}
}

// stop cancels the fetch if it still runs and waits until it has ended.
func (b *background[T]) stop() {
	b.cancel()
	<-b.done
}
