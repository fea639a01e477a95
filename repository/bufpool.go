package repository

import (
	"math/bits"
	"sync"
)

// bufPool hands out byte slices from size classes, so that the backup
// pipeline reuses its chunk and blob buffers instead of allocating per
// chunk. There are four classes per power of two (4, 5, 6, 7, 8, 10, 12,
// 14, 16 KiB, ...), so a buffer wastes at most a fifth of its size on
// rounding; chunks are between 512 KiB and 8 MiB, and with power-of-two
// classes a 1.1 MiB chunk would pin 2 MiB.
//
// Unlike sync.Pool it does not depend on GC timing: it keeps free buffers
// up to maxPoolRetained bytes in total, evicting from the class holding the
// most bytes, so that a burst of one size does not pin memory for the rest
// of a backup.
type bufPool struct {
	mu       sync.Mutex
	free     [bufClasses][][]byte
	retained int
}

// maxPoolRetained bounds the free bytes a pool keeps. The buffers in use at
// a time are bounded by the saver's inflight budget plus one compression
// scratch buffer per sealer, so keeping more would only pin memory.
const maxPoolRetained = 16 << 20

const (
	minBufShift   = 12 // 4 KiB
	classesPerPow = 4
	maxBufShift   = 25 // 32 MiB
	bufClasses    = (maxBufShift-minBufShift)*classesPerPow + 1
)

// bufClass returns the smallest class whose size is at least n.
func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	k := bits.Len(uint(n-1)) - 1 // 2^k < n <= 2^(k+1)
	quarter := 1 << (k - 2)
	sub := (n - 1<<k + quarter - 1) / quarter // 1..4
	return (k-minBufShift)*classesPerPow + sub
}

// classSize is the capacity of the buffers of class c.
func classSize(c int) int {
	base := 1 << (minBufShift + c/classesPerPow)
	return base + base/classesPerPow*(c%classesPerPow)
}

// get returns a slice of length n. It takes the smallest free buffer that
// is at most one power of two larger than n: chunk sizes spread over many
// classes, and an exact-class match alone would miss (and allocate) for
// most large chunks.
func (p *bufPool) get(n int) []byte {
	c := bufClass(n)
	if c >= bufClasses {
		return make([]byte, n)
	}
	p.mu.Lock()
	for k := c; k < min(c+classesPerPow+1, bufClasses); k++ {
		if l := len(p.free[k]); l > 0 {
			b := p.free[k][l-1]
			p.free[k][l-1] = nil
			p.free[k] = p.free[k][:l-1]
			p.retained -= cap(b)
			p.mu.Unlock()
			return b[:n]
		}
	}
	p.mu.Unlock()
	return make([]byte, n, classSize(c))
}

// put returns a slice obtained from get (any length).
func (p *bufPool) put(b []byte) {
	c := cap(b)
	if c < 1<<minBufShift {
		return
	}
	k := bufClass(c)
	if k >= bufClasses || classSize(k) != c {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.free[k] = append(p.free[k], b[:0])
	p.retained += c
	for p.retained > maxPoolRetained {
		big, bytes := -1, 0
		for i := range p.free {
			if n := len(p.free[i]) * classSize(i); n > bytes {
				big, bytes = i, n
			}
		}
		l := len(p.free[big])
		p.retained -= cap(p.free[big][l-1])
		p.free[big][l-1] = nil
		p.free[big] = p.free[big][:l-1]
	}
}
