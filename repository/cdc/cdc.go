// Package cdc cuts a stream into content-defined chunks with a gear hash,
// the way FastCDC does (Xia et al., USENIX ATC 2016): a cut where the top
// bits of a 64-bit gear hash are zero, with normalized chunking (a stricter
// condition before the normal size than after it) and nothing hashed
// before the minimum size.
//
// What it guarantees, which deduplication and the backup's chunk reuse
// rely on:
//
//   - Cuts are a pure function of the bytes since the chunk's start, the
//     table and the parameters; how the reader splits its reads does not
//     matter.
//   - Whether a cut falls after a byte depends only on the 64 bytes up to
//     it and on the chunk's length so far (the gear hash forgets a byte
//     after 64 shifts), so two streams that share a stretch cut it alike
//     once both have cut inside it.
//   - Every chunk is at least Min bytes long but the last, and at most Max.
//
// The gear table comes from a repository's secret seed (NewTable), as the
// Rabin polynomial does for restic's chunker: without it, chunk lengths
// would tell an observer of the stored sizes which known files a
// repository holds.
//
// Per byte it costs one shift, one add and one table load, about a third
// of a Rabin fingerprint's work, whose table load depends on the previous
// byte's result.
package cdc

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// window is how many bytes a gear hash depends on: its width in bits.
const window = 64

// readSize is the read buffer. A large buffer allocated on its own is
// page-aligned, which lets a reader that uses O_DIRECT read into it.
const readSize = 512 << 10

// Table is a gear table: one random 64-bit value per byte value.
type Table [256]uint64

// NewTable derives a gear table from seed: entry i is the first 8 bytes,
// little-endian, of SHA-256(seed || i).
func NewTable(seed []byte) *Table {
	var t Table
	msg := make([]byte, len(seed)+1)
	copy(msg, seed)
	for i := range t {
		msg[len(seed)] = byte(i)
		sum := sha256.Sum256(msg)
		t[i] = binary.LittleEndian.Uint64(sum[:8])
	}
	return &t
}

// Params are the chunk sizes: at least Min and at most Max bytes, and
// about Min + 2^AvgBits on average.
type Params struct {
	Min, Max int
	AvgBits  int
}

// Validate reports parameters the chunker cannot cut with.
func (p Params) Validate() error {
	if p.Min < window || p.Max <= p.Min {
		return fmt.Errorf("chunk sizes %d..%d: want %d <= min < max", p.Min, p.Max, window)
	}
	if p.AvgBits < 2 || p.AvgBits > 62 {
		return fmt.Errorf("average bits %d out of range", p.AvgBits)
	}
	return nil
}

// Chunker cuts the stream of a reader into chunks. It is not safe for
// concurrent use.
type Chunker struct {
	t      *Table
	p      Params
	normal int    // chunk length from which the looser condition holds
	maskS  uint64 // AvgBits+1 top bits: before normal
	maskL  uint64 // AvgBits-1 top bits: from normal on

	rd         io.Reader
	buf        []byte
	bpos, bmax int
	err        error // the reader's error, returned once buf is used up
}

// New returns a chunker over rd. It panics on parameters that Validate
// rejects: they come from a validated repository config.
func New(rd io.Reader, t *Table, p Params) *Chunker {
	if err := p.Validate(); err != nil {
		panic(err)
	}
	return &Chunker{
		t:      t,
		p:      p,
		normal: min(p.Min+1<<p.AvgBits, p.Max),
		maskS:  ^uint64(0) << (64 - (p.AvgBits + 1)),
		maskL:  ^uint64(0) << (64 - (p.AvgBits - 1)),
		rd:     rd,
		buf:    make([]byte, readSize),
	}
}

// Reset makes the chunker cut rd from its start, keeping its buffer.
func (c *Chunker) Reset(rd io.Reader) {
	c.rd = rd
	c.bpos, c.bmax = 0, 0
	c.err = nil
}

// Next appends the next chunk to data[:0] and returns it. At the end of
// the stream it returns io.EOF; a read error is returned as it is, and the
// chunk being cut is then lost.
func (c *Chunker) Next(data []byte) ([]byte, error) {
	data = data[:0]
	n := 0 // length of the chunk so far
	var h uint64
	t := c.t
	for {
		if c.bpos == c.bmax {
			if c.err != nil {
				if n > 0 && errors.Is(c.err, io.EOF) {
					return data, nil
				}
				return nil, c.err
			}
			c.fill()
			continue
		}
		buf := c.buf[c.bpos:c.bmax]
		// Up to Min-64 bytes the hash is not needed: a cut before Min is
		// not allowed, and the hash at Min depends on the 64 bytes before.
		if skip := c.p.Min - window - n; skip > 0 {
			k := min(skip, len(buf))
			data = append(data, buf[:k]...)
			n += k
			c.bpos += k
			continue
		}
		// For buf[i], the chunk is n+i+1 bytes long with it.
		i := 0
		end := min(len(buf), c.p.Min-1-n)
		for ; i < end; i++ {
			h = h<<1 + t[buf[i]]
		}
		if i < len(buf) {
			end = min(len(buf), c.normal-1-n)
			for ; i < end; i++ {
				h = h<<1 + t[buf[i]]
				if h&c.maskS == 0 {
					return c.cut(data, buf, i), nil
				}
			}
		}
		if i < len(buf) {
			end = min(len(buf), c.p.Max-1-n)
			for ; i < end; i++ {
				h = h<<1 + t[buf[i]]
				if h&c.maskL == 0 {
					return c.cut(data, buf, i), nil
				}
			}
		}
		if i < len(buf) { // the chunk reaches Max with buf[i]
			return c.cut(data, buf, i), nil
		}
		data = append(data, buf...)
		n += len(buf)
		c.bpos = c.bmax
	}
}

// cut ends the chunk after buf[i].
func (c *Chunker) cut(data, buf []byte, i int) []byte {
	c.bpos += i + 1
	return append(data, buf[:i+1]...)
}

// fill reads the next buffer. A short read is kept with its error, which
// Next returns once those bytes are cut.
func (c *Chunker) fill() {
	n, err := io.ReadFull(c.rd, c.buf)
	c.bpos, c.bmax = 0, n
	switch {
	case err == io.ErrUnexpectedEOF:
		c.err = io.EOF
	case err != nil:
		c.err = err
	}
}
