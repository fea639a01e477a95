package format

import (
	"bytes"
	"reflect"
	"testing"
)

// TestTreeDerivedDigest: version 2 leaves out exactly the digests that
// the content implies, reads them back equal, and version 1 trees (which
// always carry the digest) still decode.
func TestTreeDerivedDigest(t *testing.T) {
	one, two := []byte("one blob"), []byte("second blob")
	whole := HashID(append(append([]byte{}, one...), two...))
	cases := []struct {
		name       string
		node       Node
		wantStored bool // digest bytes in the encoding
	}{
		{"one blob", Node{Size: 8, Content: []ID{HashID(one)}, Digest: HashID(one)}, false},
		{"empty file", Node{Digest: HashID(nil)}, false},
		{"several blobs", Node{Size: 19, Content: []ID{HashID(one), HashID(two)}, Digest: whole}, true},
		// A digest that disagrees with the one blob is kept as written, so
		// that check and deep fixity see the disagreement.
		{"one blob, other digest", Node{Size: 8, Content: []ID{HashID(one)}, Digest: whole}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := tc.node
			n.Name, n.Type, n.Mode = "f", NodeFile, 0o644
			enc := EncodeTree(&Tree{Nodes: []Node{n}})
			if enc[0] != 2 {
				t.Fatalf("encoded as version %d", enc[0])
			}
			if stored := bytes.Contains(enc, n.Digest[:]) && !(len(n.Content) == 1 && n.Content[0] == n.Digest); stored != tc.wantStored && tc.wantStored {
				t.Errorf("digest stored: %v, want %v", stored, tc.wantStored)
			}
			if !tc.wantStored && bytes.Count(enc, n.Digest[:]) > len(n.Content) {
				t.Error("the implied digest is stored anyway")
			}
			got, err := DecodeTree(enc)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got.Nodes[0], n) {
				t.Errorf("decoded %+v, want %+v", got.Nodes[0], n)
			}
			// The same node as version 1 wrote it: digest always present.
			v1 := encodeTreeV1(t, n)
			got, err = DecodeTree(v1)
			if err != nil || !reflect.DeepEqual(got.Nodes[0], n) {
				t.Errorf("version 1: %+v, %v", got, err)
			}
		})
	}
	// Version 1 without a digest was never valid, and is not now.
	n := Node{Name: "f", Type: NodeFile, Mode: 0o644, Size: 8, Content: []ID{HashID(one)}}
	enc := EncodeTree(&Tree{Nodes: []Node{n}})
	enc[0] = 1
	if _, err := DecodeTree(enc); err == nil {
		t.Error("a version 1 file without digest decoded")
	}
}

// encodeTreeV1 writes n as version 1 did: version byte 1, digest present.
func encodeTreeV1(t *testing.T, n Node) []byte {
	t.Helper()
	// A node with a digest the content does not imply is encoded with its
	// digest; swap in such a digest, encode, and put the real one back.
	marker := HashID([]byte("marker"))
	m := n
	m.Digest = marker
	enc := EncodeTree(&Tree{Nodes: []Node{m}})
	i := bytes.Index(enc, marker[:])
	if i < 0 {
		t.Fatal("marker digest not encoded")
	}
	copy(enc[i:], n.Digest[:])
	enc[0] = 1
	return enc
}

// TestTreeOfSmallestNodes: trees whose nodes are as short as the encoding
// allows (a fifo, a socket, an empty file) decode. (Version 1 bounded the
// count by 20 bytes a node and refused a folder holding only a fifo.)
func TestTreeOfSmallestNodes(t *testing.T) {
	for _, nodes := range [][]Node{
		{{Name: "p", Type: NodeFIFO}},
		{{Name: "s", Type: NodeSocket}},
		{{Name: "e", Type: NodeFile, Digest: HashID(nil)}},
		{{Name: "a", Type: NodeFIFO}, {Name: "b", Type: NodeSocket}, {Name: "c", Type: NodeFile, Digest: HashID(nil)}},
	} {
		tr := &Tree{Nodes: nodes}
		got, err := DecodeTree(EncodeTree(tr))
		if err != nil || !reflect.DeepEqual(got, tr) {
			t.Errorf("%+v: got %+v, %v", nodes, got, err)
		}
	}
}
