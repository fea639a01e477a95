package format

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// NodeType is the kind of a tree node.
type nodeType uint8

// Node types. The values are stored in trees; never renumber them.
const (
	NodeFile    nodeType = 1
	NodeDir     nodeType = 2
	NodeSymlink nodeType = 3
	NodeFIFO    nodeType = 4
	NodeChar    nodeType = 5 // character device
	NodeBlock   nodeType = 6 // block device
	NodeSocket  nodeType = 7
)

func (t nodeType) String() string {
	switch t {
	case NodeFile:
		return "file"
	case NodeDir:
		return "dir"
	case NodeSymlink:
		return "symlink"
	case NodeFIFO:
		return "fifo"
	case NodeChar:
		return "chardev"
	case NodeBlock:
		return "blockdev"
	case NodeSocket:
		return "socket"
	}
	return fmt.Sprintf("nodetype(%d)", uint8(t))
}

// Node is one entry of a tree. Name and LinkTarget are raw bytes held in Go
// strings (no encoding is assumed; non-UTF-8 names round-trip).
type Node struct {
	Name       string
	Type       nodeType
	Mode       uint32 // permission bits plus setuid, setgid, sticky (07777)
	UID, GID   uint32
	MTime      int64 // Unix nanoseconds
	CTime      int64 // Unix nanoseconds (status change; informational)
	Inode      uint64
	Device     uint64 // st_dev of the source file system
	Links      uint64 // st_nlink
	Size       uint64 // regular files: content length
	Rdev       uint64 // device nodes
	LinkTarget string // symlinks
	Subtree    ID     // dirs
	Digest     ID     // regular files: SHA-256 of the whole content ("preservation digest")
	Content    []ID   // regular files: data blob ids in order
}

// Tree is the decoded content of a tree blob: nodes sorted by name bytes,
// names unique.
type Tree struct {
	Nodes []Node
}

const (
	// Version 2 leaves out a file's digest where the content determines
	// it (see derivedDigest); version 1 trees are still read.
	treeVersion    = 2
	maxNameLen     = 4096
	maxLinkLen     = 65536
	nodeHasSubtree = 1
	nodeHasDigest  = 2
	minNodeLen     = 17
)

// CheckName rejects names that could address anything but a direct child.
func CheckName(name string) error {
	switch {
	case name == "", name == ".", name == "..":
		return fmt.Errorf("invalid name %q", name)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("invalid name %q: contains '/' or NUL", name)
	case len(name) > maxNameLen:
		return fmt.Errorf("name of %d bytes is too long", len(name))
	}
	return nil
}

// Check validates one node on its own.
func (n *Node) check() error {
	if err := CheckName(n.Name); err != nil {
		return err
	}
	if n.Type < NodeFile || n.Type > NodeSocket {
		return fmt.Errorf("%q: unknown node type %d", n.Name, n.Type)
	}
	if n.Mode&^0o7777 != 0 {
		return fmt.Errorf("%q: invalid mode %#o", n.Name, n.Mode)
	}
	if (n.Type == NodeDir) != !n.Subtree.IsNull() {
		return fmt.Errorf("%q: subtree set on a %s", n.Name, n.Type)
	}
	if n.Type != NodeFile && (len(n.Content) > 0 || !n.Digest.IsNull() || n.Size != 0) {
		return fmt.Errorf("%q: content on a %s", n.Name, n.Type)
	}
	if n.Type == NodeFile && n.Digest.IsNull() {
		return fmt.Errorf("%q: file without digest", n.Name)
	}
	if (n.Type == NodeSymlink) != (n.LinkTarget != "") {
		return fmt.Errorf("%q: link target on a %s", n.Name, n.Type)
	}
	if strings.ContainsRune(n.LinkTarget, 0) || len(n.LinkTarget) > maxLinkLen {
		return fmt.Errorf("%q: invalid link target", n.Name)
	}
	return nil
}

// emptyDigest is the SHA-256 of no bytes: the digest of every empty file.
var emptyDigest = HashID(nil)

// derivedDigest returns the digest that a file node's content implies:
// a file of one blob has that blob's id (blob ids are SHA-256 of the
// plaintext, as the digest is of the whole file), and an empty file the
// digest of no bytes. A file of several blobs implies none.
func derivedDigest(n *Node) (ID, bool) {
	switch len(n.Content) {
	case 0:
		return emptyDigest, n.Size == 0
	case 1:
		return n.Content[0], true
	}
	return ID{}, false
}

func EncodeTree(t *Tree) []byte {
	b := make([]byte, 0, 64+len(t.Nodes)*128)
	b = append(b, treeVersion)
	b = binary.AppendUvarint(b, uint64(len(t.Nodes)))
	for i := range t.Nodes {
		n := &t.Nodes[i]
		b = binary.AppendUvarint(b, uint64(len(n.Name)))
		b = append(b, n.Name...)
		b = append(b, byte(n.Type))
		b = binary.AppendUvarint(b, uint64(n.Mode))
		b = binary.AppendUvarint(b, uint64(n.UID))
		b = binary.AppendUvarint(b, uint64(n.GID))
		b = binary.AppendVarint(b, n.MTime)
		b = binary.AppendVarint(b, n.CTime)
		b = binary.AppendUvarint(b, n.Inode)
		b = binary.AppendUvarint(b, n.Device)
		b = binary.AppendUvarint(b, n.Links)
		b = binary.AppendUvarint(b, n.Size)
		b = binary.AppendUvarint(b, n.Rdev)
		b = binary.AppendUvarint(b, uint64(len(n.LinkTarget)))
		b = append(b, n.LinkTarget...)
		var flags byte
		if !n.Subtree.IsNull() {
			flags |= nodeHasSubtree
		}
		// Most files of a mail spool or a source tree are one blob: their
		// digest would repeat the blob id (32 bytes a file).
		if d, ok := derivedDigest(n); !n.Digest.IsNull() && !(n.Type == NodeFile && ok && d == n.Digest) {
			flags |= nodeHasDigest
		}
		b = append(b, flags)
		if flags&nodeHasSubtree != 0 {
			b = append(b, n.Subtree[:]...)
		}
		if flags&nodeHasDigest != 0 {
			b = append(b, n.Digest[:]...)
		}
		b = binary.AppendUvarint(b, uint64(len(n.Content)))
		for _, id := range n.Content {
			b = append(b, id[:]...)
		}
		b = binary.AppendUvarint(b, 0) // length of extension data (none in version 1)
	}
	return b
}

// DecodeTree parses and validates a tree. Hostile input yields an error,
// never a panic, and allocations stay proportional to len(b).
func DecodeTree(b []byte) (*Tree, error) {
	r := &byteReader{b: b}
	v := r.bytes(1)
	if r.err == nil && v[0] != 1 && v[0] != treeVersion {
		return nil, fmt.Errorf("decode tree: unsupported version %d", v[0])
	}
	// The count is bounded by the smallest node (17 bytes: a one-byte
	// name, one byte for each number, no ids), so that a hostile count
	// cannot make the allocation below large.
	count := r.uvarint(uint64(len(r.b) / minNodeLen))
	if r.err != nil {
		return nil, fmt.Errorf("decode tree: %w", r.err)
	}
	t := &Tree{Nodes: make([]Node, 0, count)}
	const m32 = 1<<32 - 1
	for i := uint64(0); i < count; i++ {
		var n Node
		n.Name = string(r.bytes(int(r.uvarint(maxNameLen))))
		tb := r.bytes(1)
		if r.err != nil {
			break
		}
		n.Type = nodeType(tb[0])
		n.Mode = uint32(r.uvarint(m32))
		n.UID = uint32(r.uvarint(m32))
		n.GID = uint32(r.uvarint(m32))
		n.MTime = r.varint()
		n.CTime = r.varint()
		n.Inode = r.uvarint(1<<64 - 1)
		n.Device = r.uvarint(1<<64 - 1)
		n.Links = r.uvarint(1<<64 - 1)
		n.Size = r.uvarint(1<<63 - 1)
		n.Rdev = r.uvarint(1<<64 - 1)
		n.LinkTarget = string(r.bytes(int(r.uvarint(maxLinkLen))))
		fb := r.bytes(1)
		if r.err != nil {
			break
		}
		if fb[0]&^(nodeHasSubtree|nodeHasDigest) != 0 {
			return nil, fmt.Errorf("decode tree: node %d: unknown flags %#x", i, fb[0])
		}
		if fb[0]&nodeHasSubtree != 0 {
			n.Subtree = r.id()
			if r.err == nil && n.Subtree.IsNull() {
				return nil, fmt.Errorf("decode tree: node %d: null subtree", i)
			}
		}
		if fb[0]&nodeHasDigest != 0 {
			n.Digest = r.id()
		}
		nc := r.uvarint(uint64(len(r.b) / 32))
		if r.err == nil && nc > 0 {
			n.Content = make([]ID, nc)
			for j := range n.Content {
				n.Content[j] = r.id()
			}
		}
		r.bytes(int(r.uvarint(uint64(len(r.b))))) // extension data, ignored
		if r.err != nil {
			break
		}
		if v[0] >= 2 && n.Type == NodeFile && fb[0]&nodeHasDigest == 0 {
			if d, ok := derivedDigest(&n); ok {
				n.Digest = d
			}
		}
		if err := n.check(); err != nil {
			return nil, fmt.Errorf("decode tree: node %d: %w", i, err)
		}
		if len(t.Nodes) > 0 && t.Nodes[len(t.Nodes)-1].Name >= n.Name {
			return nil, fmt.Errorf("decode tree: node %q is out of order or duplicated", n.Name)
		}
		t.Nodes = append(t.Nodes, n)
	}
	if r.err != nil {
		return nil, fmt.Errorf("decode tree: %w", r.err)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("decode tree: %d trailing bytes", len(r.b))
	}
	return t, nil
}

func (r *byteReader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errors.New("truncated or overlong varint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

// Find returns the node called name, or nil.
func (t *Tree) Find(name string) *Node {
	i := sort.Search(len(t.Nodes), func(i int) bool { return t.Nodes[i].Name >= name })
	if i < len(t.Nodes) && t.Nodes[i].Name == name {
		return &t.Nodes[i]
	}
	return nil
}
