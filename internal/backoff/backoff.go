// Package backoff is the one backoff of custos: how long to wait before the
// next try of something that failed, and the wait itself. S3 requests (via
// repository/backend/retry), job retries and the catalog spool's flushes all
// use it, so they grow, cap and spread their waits the same way.
//
// The waits grow exponentially up to a cap, and a fraction of each is drawn
// at random (Jitter 1 is "full jitter": uniform in [0, d]), so that many
// clients failing together do not come back together. A wait returns as
// soon as its context is done. There is no package state: the random draw
// comes from the Policy (Rand, for tests) or from math/rand/v2's
// goroutine-safe source.
package backoff

import (
	"context"
	"math"
	"math/rand/v2"
	"time"
)

// Policy says how long to wait before each retry. The zero Policy waits 0.
type Policy struct {
	// Initial is the (largest) wait before the first retry.
	Initial time.Duration
	// Max caps the wait before jitter; 0 means no cap.
	Max time.Duration
	// Multiplier grows the wait after each retry; below 1 means 2.
	Multiplier float64
	// Jitter is the fraction of each wait drawn at random, in [0, 1]:
	// the wait is uniform in [d*(1-Jitter), d]. 1 is full jitter, 0 none.
	Jitter float64
	// Rand returns a number in [0, 1) for the jitter; nil means
	// math/rand/v2.Float64. Set it to make waits reproducible in tests;
	// it must be safe for concurrent use if the Policy is shared.
	Rand func() float64
}

// Ceiling returns the wait before retry n (1 = the first retry) before
// jitter: Initial * Multiplier^(n-1), at most Max.
func (p Policy) Ceiling(n int) time.Duration {
	if n < 1 {
		n = 1
	}
	mult := p.Multiplier
	if mult < 1 {
		mult = 2
	}
	d := float64(p.Initial) * math.Pow(mult, float64(n-1))
	if p.Max > 0 && d > float64(p.Max) {
		d = float64(p.Max)
	}
	switch {
	case d <= 0 || math.IsNaN(d):
		return 0
	case d >= math.MaxInt64:
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(d)
}

// Delay returns the wait before retry n (1 = the first retry), with jitter.
func (p Policy) Delay(n int) time.Duration {
	d := p.Ceiling(n)
	j := min(max(p.Jitter, 0), 1)
	if j == 0 || d == 0 {
		return d
	}
	u := rand.Float64
	if p.Rand != nil {
		u = p.Rand
	}
	return d - time.Duration(float64(d)*j*u())
}

// Wait waits for the delay before retry n. It returns ctx.Err() as soon as
// ctx is done, and nil otherwise.
func (p Policy) Wait(ctx context.Context, n int) error {
	return Sleep(ctx, p.Delay(n))
}

// Sleep waits for d, or until ctx is done, in which case it returns
// ctx.Err(). A done context wins even when d is 0.
func Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
