package format

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// checksumOnly is the sealer of an unencrypted repository: with it, the
// fuzzer can reach the decoders behind the seal.
var checksumOnly = &Sealer{}

// cheapKDF makes key files fast to open in tests.
var cheapKDF = &KdfParams{N: 1 << 10, R: 8, P: 1}

// packBytes assembles a pack from sealed blobs the way a pack writer does:
// blobs, sealed header, trailer.
func packBytes(s *Sealer, created time.Time, blobs ...[]byte) []byte {
	var pack []byte
	var entries []PackedBlob
	for _, pt := range blobs {
		sealed := s.Seal(nil, pt)
		entries = append(entries, PackedBlob{Type: DataBlob, ID: HashID(pt), Offset: uint32(len(pack)), Length: uint32(len(sealed)), RawLength: uint32(len(pt))})
		pack = append(pack, sealed...)
	}
	hdr := s.Seal(nil, EncodePackHeader(created, entries))
	pack = append(pack, hdr...)
	return binary.LittleEndian.AppendUint32(pack, uint32(len(hdr)))
}

func sampleBlobs() []PackedBlob {
	return []PackedBlob{
		{Type: DataBlob, Flags: 0, ID: HashID([]byte("a")), Offset: 0, Length: 116, RawLength: 100},
		{Type: TreeBlob, Flags: FlagZstd, ID: HashID([]byte("b")), Offset: 116, Length: 50, RawLength: 400},
	}
}

func FuzzPackHeader(f *testing.F) {
	s := checksumOnly
	f.Add(packBytes(s, time.Unix(1700000000, 0), []byte("xyz"), []byte("compressed")))
	f.Add(EncodePackHeader(time.Unix(1, 0), sampleBlobs()))
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		// As a whole pack tail (seal, trailer, header).
		if h, err := ParsePackTail(s, b, int64(len(b))); err == nil {
			var end int64
			for _, e := range h.Blobs {
				end += int64(e.Length)
			}
			if end > int64(len(b)) {
				t.Fatalf("header covers %d bytes of a %d-byte pack", end, len(b))
			}
		}
		// As a bare header plaintext.
		if h, err := decodePackHeader(b, 166, s.Overhead()); err == nil {
			if !bytes.Equal(EncodePackHeader(h.Created, h.Blobs), b) {
				t.Fatal("pack header does not re-encode to the same bytes")
			}
		}
	})
}

func FuzzIndexFile(f *testing.F) {
	s := checksumOnly
	idx := &IndexFile{Supersedes: []ID{HashID([]byte("old"))}, Packs: []IndexPack{{ID: HashID([]byte("p")), Size: 1000, Blobs: sampleBlobs()}}}
	plain := encodeIndexFile(idx)
	f.Add(plain)
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(SealIndexFile(s, enc, idx))
	f.Add([]byte{1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if x, err := decodeIndexFile(b, s.Overhead()); err == nil {
			y, err := decodeIndexFile(encodeIndexFile(x), s.Overhead())
			if err != nil || !reflect.DeepEqual(normIndex(x), normIndex(y)) {
				t.Fatalf("index does not round-trip: %v", err)
			}
		}
		_, _ = OpenIndexFile(s, b)
		// Feed b as a sealed zstd body too, to reach the decompressor.
		_, _ = OpenIndexFile(s, s.Seal(nil, append([]byte{indexZstd}, b...)))
	})
}

func normIndex(x *IndexFile) *IndexFile {
	for i := range x.Packs {
		if len(x.Packs[i].Blobs) == 0 {
			x.Packs[i].Blobs = nil
		}
	}
	if len(x.Packs) == 0 {
		x.Packs = nil
	}
	return x
}

func FuzzTree(f *testing.F) {
	content := []byte("hello")
	t0 := &Tree{Nodes: []Node{
		{Name: "a dir", Type: NodeDir, Mode: 0o755, Subtree: HashID([]byte("t")), MTime: 1, CTime: -5},
		{Name: "file\xff", Type: NodeFile, Mode: 0o644, Size: 5, Digest: HashID(content), Content: []ID{HashID(content)}, Inode: 7, Links: 2},
		{Name: "link", Type: NodeSymlink, Mode: 0o777, LinkTarget: "../x"},
	}}
	f.Add(EncodeTree(t0))
	f.Add(EncodeTree(&Tree{}))
	f.Add(EncodeTree(&Tree{Nodes: []Node{{Name: "..", Type: NodeFile}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := DecodeTree(b)
		if err != nil {
			return
		}
		for i := range tr.Nodes {
			if err := CheckName(tr.Nodes[i].Name); err != nil {
				t.Fatalf("decoded a tree with a bad name: %v", err)
			}
		}
		tr2, err := DecodeTree(EncodeTree(tr))
		if err != nil || !reflect.DeepEqual(tr, tr2) {
			t.Fatalf("tree does not round-trip: %v", err)
		}
	})
}

func FuzzSnapshot(f *testing.F) {
	p := HashID([]byte("parent"))
	b, _ := EncodeSnapshot(&Snapshot{Time: time.Unix(1, 0), Dataset: "d", Host: "h", Tree: HashID([]byte("t")), Parent: &p, Warnings: []string{"w"}})
	f.Add(b)
	f.Add([]byte(`{"version":1,"tree":"00"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		sn, err := DecodeSnapshot(b)
		if err != nil {
			return
		}
		if sn.Tree.IsNull() {
			t.Fatal("snapshot without tree accepted")
		}
		if _, err := EncodeSnapshot(sn); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzKeyFile(f *testing.F) {
	kb, err := NewKeyFile(KdfScrypt, *cheapKDF, []byte("pw"), make([]byte, KeySize))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(kb)
	f.Add([]byte(`{"version":1,"kdf":"argon2id","params":{"time":1,"memory_kib":4294967295,"threads":255}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := DecodeKeyFile(b)
		if err != nil {
			return
		}
		if k.KDF == KdfScrypt && 128*int64(k.Params.N)*int64(k.Params.R) > 1<<30 {
			t.Fatal("accepted a key file that asks for more than 1 GiB")
		}
		if k.KDF == KdfArgon2id && k.Params.MemoryKiB > 4<<20 {
			t.Fatal("accepted a key file that asks for more than 4 GiB")
		}
	})
}

func FuzzConfig(f *testing.F) {
	s, _ := NewSealer(make([]byte, KeySize))
	for _, name := range []string{ChunkerGear, ChunkerRabin} {
		cfg, err := NewRepoConfig(0, false, name)
		if err != nil {
			f.Fatal(err)
		}
		plain, _ := EncodeConfigFile(cfg, &Sealer{})
		f.Add(plain)
		enc, _ := EncodeConfigFile(cfg, s)
		f.Add(enc)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		cf, err := DecodeConfigFile(b)
		if err != nil {
			return
		}
		for _, sl := range []*Sealer{{}, s} {
			c, err := DecodeRepoConfig(cf, sl)
			if err != nil {
				continue
			}
			if c.PackSize < MinPackSize || c.PackSize > maxPackSize || (c.gear == nil && !c.pol.Irreducible()) {
				t.Fatalf("invalid config accepted: %+v", c)
			}
		}
	})
}
