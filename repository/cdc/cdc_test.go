package cdc

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
	"testing/iotest"
)

// refCuts is the definition, byte by byte: the lengths of the chunks of
// data.
func refCuts(data []byte, t *Table, p Params) []int {
	normal := min(p.Min+1<<p.AvgBits, p.Max)
	maskS := ^uint64(0) << (64 - (p.AvgBits + 1))
	maskL := ^uint64(0) << (64 - (p.AvgBits - 1))
	var cuts []int
	for start := 0; start < len(data); {
		var h uint64
		n := len(data) - start
		for l := 1; l <= len(data)-start; l++ {
			if l > p.Min-window {
				h = h<<1 + t[data[start+l-1]]
			}
			mask := maskS
			if l >= normal {
				mask = maskL
			}
			if l == p.Max || (l >= p.Min && h&mask == 0) {
				n = l
				break
			}
		}
		cuts = append(cuts, n)
		start += n
	}
	return cuts
}

func cuts(t testing.TB, c *Chunker) []int {
	t.Helper()
	var out []int
	var buf []byte
	for {
		chunk, err := c.Next(buf)
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, len(chunk))
		buf = chunk
	}
}

func randData(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

var small = Params{Min: 256, Max: 4096, AvgBits: 9}

func TestCutsFollowTheDefinition(t *testing.T) {
	tab := NewTable([]byte("seed"))
	zeros := make([]byte, 20000)
	text := bytes.Repeat([]byte("the same line of a log, again and again\n"), 1000)
	cases := []struct {
		name string
		data []byte
		p    Params
	}{
		{"random", randData(1, 300000), small},
		{"zeros cut at max", zeros, small},
		{"repeating text", text, small},
		{"shorter than min", randData(2, 100), small},
		{"exactly min", randData(3, 256), small},
		{"empty", nil, small},
		{"normal beyond max", randData(4, 100000), Params{Min: 64, Max: 300, AvgBits: 12}},
		{"min is the window", randData(5, 100000), Params{Min: 64, Max: 1024, AvgBits: 6}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := refCuts(tc.data, tab, tc.p)
			readers := map[string]io.Reader{
				"whole":         bytes.NewReader(tc.data),
				"one byte":      iotest.OneByteReader(bytes.NewReader(tc.data)),
				"halves":        iotest.HalfReader(bytes.NewReader(tc.data)),
				"eof with data": iotest.DataErrReader(bytes.NewReader(tc.data)),
			}
			for rn, rd := range readers {
				got := cuts(t, New(rd, tab, tc.p))
				if !slices.Equal(got, want) {
					t.Fatalf("%s: cuts %v, want %v", rn, head(got), head(want))
				}
			}
		})
	}
}

func TestChunkSizes(t *testing.T) {
	p := Params{Min: 256 << 10, Max: 8 << 20, AvgBits: 19}
	data := randData(7, 96<<20)
	got := cuts(t, New(bytes.NewReader(data), NewTable([]byte("k")), p))
	total := 0
	for i, n := range got {
		total += n
		if n > p.Max || (n < p.Min && i != len(got)-1) {
			t.Fatalf("chunk %d: %d bytes, outside %d..%d", i, n, p.Min, p.Max)
		}
	}
	if total != len(data) {
		t.Fatalf("chunks hold %d bytes, want %d", total, len(data))
	}
	// Normalized chunking averages about Min + 1.09 * 2^AvgBits.
	avg := float64(total) / float64(len(got))
	want := float64(p.Min) + 1.09*float64(int(1)<<p.AvgBits)
	if avg < 0.85*want || avg > 1.15*want {
		t.Fatalf("average chunk %.0f bytes over %d chunks, want about %.0f", avg, len(got), want)
	}
}

// A stretch that two streams share, at different offsets, is cut alike
// once both have cut inside it: that is what makes shifted data dedup.
func TestShiftedDataCutsAlike(t *testing.T) {
	tab := NewTable([]byte("shift"))
	body := randData(8, 200000)
	shifted := append(randData(9, 1234), body...)
	a := offsets(refCuts(body, tab, small), 0)
	b := offsets(refCuts(shifted, tab, small), 1234)
	common := 0
	for o := range a {
		if b[o] {
			common++
		}
	}
	if common < len(a)-3 {
		t.Fatalf("%d of %d cut offsets shared after a 1234-byte shift", common, len(a))
	}
}

func offsets(lengths []int, base int) map[int]bool {
	m := map[int]bool{}
	o := -base
	for _, n := range lengths {
		o += n
		m[o] = true
	}
	return m
}

func TestTheSeedMovesTheCuts(t *testing.T) {
	data := randData(10, 200000)
	a := refCuts(data, NewTable([]byte("one")), small)
	b := refCuts(data, NewTable([]byte("two")), small)
	if slices.Equal(a, b) {
		t.Fatal("two seeds cut alike")
	}
}

// The table and cuts of a fixed seed are part of the format: a change
// here changes where every repository of this chunker cuts, and new
// backups no longer deduplicate against old ones.
func TestFormatIsStable(t *testing.T) {
	tab := NewTable([]byte("custos"))
	// sha256("custos\x00")[:8], little-endian
	if tab[0] != 0x0e538f01431d1878 {
		t.Errorf("table[0] = %#x", tab[0])
	}
	got := cuts(t, New(bytes.NewReader(randData(11, 20000)), tab, small))
	want := []int{593, 717, 325, 793, 865, 816, 996, 824, 463, 599, 1209, 761, 301, 976, 629, 1120, 953, 346, 1982, 611, 842, 974, 808, 421, 433, 268, 375}
	if !slices.Equal(got, want) {
		t.Errorf("cuts %v, want %v", got, want)
	}
}

func TestReadErrorIsReturned(t *testing.T) {
	boom := errors.New("boom")
	rd := io.MultiReader(bytes.NewReader(randData(12, 10000)), iotest.ErrReader(boom))
	c := New(rd, NewTable(nil), small)
	var err error
	for err == nil {
		_, err = c.Next(nil)
	}
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
}

func TestResetCutsAgain(t *testing.T) {
	tab := NewTable([]byte("r"))
	data := randData(13, 50000)
	c := New(bytes.NewReader(randData(14, 3000)), tab, small)
	if _, err := c.Next(nil); err != nil { // leave bytes in the buffer
		t.Fatal(err)
	}
	c.Reset(bytes.NewReader(data))
	if got, want := cuts(t, c), refCuts(data, tab, small); !slices.Equal(got, want) {
		t.Fatalf("after reset: %v, want %v", head(got), head(want))
	}
}

func FuzzCuts(f *testing.F) {
	f.Add([]byte("seed"), randData(15, 5000), uint16(64), uint16(700), uint8(7))
	f.Fuzz(func(t *testing.T, seed, data []byte, minSize, extra uint16, bits uint8) {
		p := Params{Min: int(minSize), Max: int(minSize) + int(extra), AvgBits: int(bits)}
		if p.Validate() != nil {
			return
		}
		tab := NewTable(seed)
		want := refCuts(data, tab, p)
		got := cuts(t, New(iotest.HalfReader(bytes.NewReader(data)), tab, p))
		if !slices.Equal(got, want) {
			t.Fatalf("cuts %v, want %v", head(got), head(want))
		}
	})
}

func head(s []int) []int {
	if len(s) > 20 {
		return s[:20]
	}
	return s
}

func BenchmarkNext(b *testing.B) {
	data := randData(16, 64<<20)
	p := Params{Min: 256 << 10, Max: 8 << 20, AvgBits: 19}
	c := New(nil, NewTable([]byte("bench")), p)
	buf := make([]byte, 0, p.Max)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		c.Reset(bytes.NewReader(data))
		for {
			if _, err := c.Next(buf); err == io.EOF {
				break
			}
		}
	}
}
