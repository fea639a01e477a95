package backoff_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/custos-backup/custos/internal/backoff"
)

func fixed(u float64) func() float64 { return func() float64 { return u } }

func TestDelay(t *testing.T) {
	s := time.Second
	tests := []struct {
		name string
		p    backoff.Policy
		n    int
		want time.Duration
	}{
		{"zero policy", backoff.Policy{}, 3, 0},
		{"first retry", backoff.Policy{Initial: s}, 1, s},
		{"n below 1 is the first", backoff.Policy{Initial: s}, 0, s},
		{"doubles by default", backoff.Policy{Initial: s}, 4, 8 * s},
		{"multiplier", backoff.Policy{Initial: s, Multiplier: 3}, 3, 9 * s},
		{"multiplier below 1 means 2", backoff.Policy{Initial: s, Multiplier: 0.5}, 3, 4 * s},
		{"capped", backoff.Policy{Initial: s, Max: 5 * s}, 4, 5 * s},
		{"huge n is capped, not overflowed", backoff.Policy{Initial: s, Max: time.Minute}, 5000, time.Minute},
		{"huge n without cap saturates", backoff.Policy{Initial: s}, 5000, time.Duration(1<<63 - 1)},
		{"full jitter, draw 0", backoff.Policy{Initial: s, Jitter: 1, Rand: fixed(0)}, 2, 2 * s},
		{"full jitter, draw 0.75", backoff.Policy{Initial: s, Jitter: 1, Rand: fixed(0.75)}, 2, s / 2},
		{"full jitter, draw near 1", backoff.Policy{Initial: s, Jitter: 1, Rand: fixed(0.999)}, 1, time.Millisecond},
		{"partial jitter", backoff.Policy{Initial: s, Jitter: 0.2, Rand: fixed(0.5)}, 1, 900 * time.Millisecond},
		{"jitter above 1 is 1", backoff.Policy{Initial: s, Jitter: 7, Rand: fixed(0.5)}, 1, s / 2},
		{"negative jitter is none", backoff.Policy{Initial: s, Jitter: -1, Rand: fixed(0.5)}, 1, s},
		{"jitter applies after the cap", backoff.Policy{Initial: s, Max: 4 * s, Jitter: 1, Rand: fixed(0.5)}, 10, 2 * s},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.p.Delay(tt.n); got != tt.want {
				t.Errorf("Delay(%d) = %v, want %v", tt.n, got, tt.want)
			}
		})
	}
}

// The default source stays within [d*(1-Jitter), d].
func TestDelayBounds(t *testing.T) {
	p := backoff.Policy{Initial: time.Second, Max: 8 * time.Second, Jitter: 0.5}
	for n := 1; n <= 6; n++ {
		c := p.Ceiling(n)
		for range 200 {
			if d := p.Delay(n); d < c/2 || d > c {
				t.Fatalf("Delay(%d) = %v, outside [%v, %v]", n, d, c/2, c)
			}
		}
	}
}

// Two policies with the same seed draw the same waits.
func TestSeeded(t *testing.T) {
	seq := func() []time.Duration {
		r := rand.New(rand.NewPCG(1, 2))
		p := backoff.Policy{Initial: time.Second, Max: time.Minute, Jitter: 1, Rand: r.Float64}
		var ds []time.Duration
		for n := 1; n <= 8; n++ {
			ds = append(ds, p.Delay(n))
		}
		return ds
	}
	a, b := seq(), seq()
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("draw %d: %v != %v", i, a[i], b[i])
		}
	}
	if a[0] == a[1] && a[1] == a[2] {
		t.Errorf("waits %v do not vary", a[:3])
	}
}

func TestSleep(t *testing.T) {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		ctx  context.Context
		d    time.Duration
		want error
	}{
		{"no wait", context.Background(), 0, nil},
		{"short wait", context.Background(), time.Millisecond, nil},
		// An hour: the test would hang if the context were ignored.
		{"cancelled before", done, time.Hour, context.Canceled},
		{"cancelled wins over zero", done, 0, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := backoff.Sleep(tt.ctx, tt.d); !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Errorf("Sleep = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestWaitCancelledMidway(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- backoff.Policy{Initial: time.Hour}.Wait(ctx, 1) }()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("Wait = %v, want context.Canceled", err)
	}
}
