package repository

import (
	"math/bits"
	"sync"
)

// bufPool hands out byte slices from power-of-two size classes, so that the
// backup pipeline reuses its chunk and blob buffers instead of allocating
// per chunk. Unlike sync.Pool it does not depend on GC timing: it keeps
// free buffers up to maxPoolRetained bytes in total, evicting from the
// class holding the most bytes, so that a burst of one size does not pin
// memory for the rest of a backup.
type bufPool struct {
	mu       sync.Mutex
	free     [bufClasses][][]byte
	retained int
}

const maxPoolRetained = 40 << 20

const (
	minBufShift = 12 // 4 KiB
	bufClasses  = 14 // up to 32 MiB
)

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// get returns a slice of length n.
func (p *bufPool) get(n int) []byte {
	c := bufClass(n)
	if c >= bufClasses {
		return make([]byte, n)
	}
	p.mu.Lock()
	if l := len(p.free[c]); l > 0 {
		b := p.free[c][l-1]
		p.free[c] = p.free[c][:l-1]
		p.retained -= cap(b)
		p.mu.Unlock()
		return b[:n]
	}
	p.mu.Unlock()
	return make([]byte, n, 1<<(c+minBufShift))
}

// put returns a slice obtained from get (any length).
func (p *bufPool) put(b []byte) {
	c := cap(b)
	if c < 1<<minBufShift || c&(c-1) != 0 {
		return
	}
	k := bufClass(c)
	if k >= bufClasses {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.free[k] = append(p.free[k], b[:0])
	p.retained += c
	for p.retained > maxPoolRetained {
		big, bytes := -1, 0
		for i := range p.free {
			if n := len(p.free[i]) << (i + minBufShift); n > bytes {
				big, bytes = i, n
			}
		}
		l := len(p.free[big])
		p.retained -= cap(p.free[big][l-1])
		p.free[big][l-1] = nil
		p.free[big] = p.free[big][:l-1]
	}
}
