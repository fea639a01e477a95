package repository

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// fuzzRepo is an unencrypted repository shell: with the checksum sealer,
// the fuzzer can reach the decoders behind the seal.
func fuzzRepo() *Repository {
	return &Repository{seal: &sealer{}, idx: newIndex()}
}

func sampleBlobs() []packedBlob {
	return []packedBlob{
		{Type: DataBlob, Flags: 0, ID: hashID([]byte("a")), Offset: 0, Length: 116, RawLength: 100},
		{Type: TreeBlob, Flags: flagZstd, ID: hashID([]byte("b")), Offset: 116, Length: 50, RawLength: 400},
	}
}

func FuzzPackHeader(f *testing.F) {
	r := fuzzRepo()
	pb := newPackBuilder(true)
	_ = pb.add(DataBlob, hashID([]byte("x")), 0, 3, r.seal.seal(nil, []byte("xyz")))
	_ = pb.add(TreeBlob, hashID([]byte("y")), flagZstd, 10, r.seal.seal(nil, []byte("compressed")))
	if _, err := pb.finish(r.seal, time.Unix(1700000000, 0)); err != nil {
		f.Fatal(err)
	}
	f.Add(pb.buf)
	f.Add(encodePackHeader(time.Unix(1, 0), sampleBlobs()))
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		// As a whole pack tail (seal, trailer, header).
		if h, err := r.parsePackTail(b, int64(len(b))); err == nil {
			var end int64
			for _, e := range h.Blobs {
				end += int64(e.Length)
			}
			if end > int64(len(b)) {
				t.Fatalf("header covers %d bytes of a %d-byte pack", end, len(b))
			}
		}
		// As a bare header plaintext.
		if h, err := decodePackHeader(b, 166, r.seal.overhead()); err == nil {
			if !bytes.Equal(encodePackHeader(h.Created, h.Blobs), b) {
				t.Fatal("pack header does not re-encode to the same bytes")
			}
		}
	})
}

func FuzzIndexFile(f *testing.F) {
	r := fuzzRepo()
	idx := &indexFile{Supersedes: []ID{hashID([]byte("old"))}, Packs: []indexPack{{ID: hashID([]byte("p")), Size: 1000, Blobs: sampleBlobs()}}}
	plain := encodeIndexFile(idx)
	f.Add(plain)
	f.Add(r.sealIndexFile(idx))
	f.Add([]byte{1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if x, err := decodeIndexFile(b, r.seal.overhead()); err == nil {
			y, err := decodeIndexFile(encodeIndexFile(x), r.seal.overhead())
			if err != nil || !reflect.DeepEqual(normIndex(x), normIndex(y)) {
				t.Fatalf("index does not round-trip: %v", err)
			}
		}
		_, _ = r.openIndexFile(b)
		// Feed b as a sealed zstd body too, to reach the decompressor.
		_, _ = r.openIndexFile(r.seal.seal(nil, append([]byte{indexZstd}, b...)))
	})
}

func normIndex(x *indexFile) *indexFile {
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
	t0 := &tree{Nodes: []node{
		{Name: "a dir", Type: nodeDir, Mode: 0o755, Subtree: hashID([]byte("t")), MTime: 1, CTime: -5},
		{Name: "file\xff", Type: nodeFile, Mode: 0o644, Size: 5, Digest: hashID(content), Content: []ID{hashID(content)}, Inode: 7, Links: 2},
		{Name: "link", Type: nodeSymlink, Mode: 0o777, LinkTarget: "../x"},
	}}
	f.Add(encodeTree(t0))
	f.Add(encodeTree(&tree{}))
	f.Add(encodeTree(&tree{Nodes: []node{{Name: "..", Type: nodeFile}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := decodeTree(b)
		if err != nil {
			return
		}
		for i := range tr.Nodes {
			if err := checkName(tr.Nodes[i].Name); err != nil {
				t.Fatalf("decoded a tree with a bad name: %v", err)
			}
		}
		tr2, err := decodeTree(encodeTree(tr))
		if err != nil || !reflect.DeepEqual(tr, tr2) {
			t.Fatalf("tree does not round-trip: %v", err)
		}
	})
}

func FuzzSnapshot(f *testing.F) {
	p := hashID([]byte("parent"))
	b, _ := encodeSnapshot(&Snapshot{Time: time.Unix(1, 0), Dataset: "d", Host: "h", Tree: hashID([]byte("t")), Parent: &p, Warnings: []string{"w"}})
	f.Add(b)
	f.Add([]byte(`{"version":1,"tree":"00"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		sn, err := decodeSnapshot(b)
		if err != nil {
			return
		}
		if sn.Tree.IsNull() {
			t.Fatal("snapshot without tree accepted")
		}
		if _, err := encodeSnapshot(sn); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzKeyFile(f *testing.F) {
	kb, err := newKeyFile(kdfScrypt, *cheapKDF, []byte("pw"), make([]byte, keySize))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(kb)
	f.Add([]byte(`{"version":1,"kdf":"argon2id","params":{"time":1,"memory_kib":4294967295,"threads":255}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := decodeKeyFile(b)
		if err != nil {
			return
		}
		if k.KDF == kdfScrypt && 128*int64(k.Params.N)*int64(k.Params.R) > 1<<30 {
			t.Fatal("accepted a key file that asks for more than 1 GiB")
		}
		if k.KDF == kdfArgon2id && k.Params.MemoryKiB > 4<<20 {
			t.Fatal("accepted a key file that asks for more than 4 GiB")
		}
	})
}

func FuzzConfig(f *testing.F) {
	cfg, err := newRepoConfig(InitOptions{})
	if err != nil {
		f.Fatal(err)
	}
	plain, _ := encodeConfigFile(cfg, &sealer{})
	f.Add(plain)
	s, _ := newSealer(make([]byte, keySize))
	enc, _ := encodeConfigFile(cfg, s)
	f.Add(enc)
	f.Fuzz(func(t *testing.T, b []byte) {
		cf, err := decodeConfigFile(b)
		if err != nil {
			return
		}
		for _, sl := range []*sealer{{}, s} {
			c, err := decodeRepoConfig(cf, sl)
			if err != nil {
				continue
			}
			if c.PackSize < minPackSize || c.PackSize > maxPackSize || !c.pol.Irreducible() {
				t.Fatalf("invalid config accepted: %+v", c)
			}
		}
	})
}

func FuzzLock(f *testing.F) {
	b, _ := json.Marshal(lockInfo{Version: 1, Created: time.Unix(5, 0), Refreshed: time.Unix(6, 0), Hostname: "h", PID: 3})
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		li, err := decodeLockInfo(b)
		if err == nil && li.Refreshed.Before(li.Created) {
			t.Fatal("lock refreshed before created accepted")
		}
	})
}
