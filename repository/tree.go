package repository

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// nodeType is the kind of a tree node.
type nodeType uint8

// Node types. The values are stored in trees; never renumber them.
const (
	nodeFile    nodeType = 1
	nodeDir     nodeType = 2
	nodeSymlink nodeType = 3
	nodeFIFO    nodeType = 4
	nodeChar    nodeType = 5 // character device
	nodeBlock   nodeType = 6 // block device
	nodeSocket  nodeType = 7
)

func (t nodeType) String() string {
	switch t {
	case nodeFile:
		return "file"
	case nodeDir:
		return "dir"
	case nodeSymlink:
		return "symlink"
	case nodeFIFO:
		return "fifo"
	case nodeChar:
		return "chardev"
	case nodeBlock:
		return "blockdev"
	case nodeSocket:
		return "socket"
	}
	return fmt.Sprintf("nodetype(%d)", uint8(t))
}

// node is one entry of a tree. Name and LinkTarget are raw bytes held in Go
// strings (no encoding is assumed; non-UTF-8 names round-trip).
type node struct {
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

// tree is the decoded content of a tree blob: nodes sorted by name bytes,
// names unique.
type tree struct {
	Nodes []node
}

const (
	treeVersion    = 1
	maxNameLen     = 4096
	maxLinkLen     = 65536
	nodeHasSubtree = 1
	nodeHasDigest  = 2
)

// checkName rejects names that could address anything but a direct child.
func checkName(name string) error {
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

// check validates one node on its own.
func (n *node) check() error {
	if err := checkName(n.Name); err != nil {
		return err
	}
	if n.Type < nodeFile || n.Type > nodeSocket {
		return fmt.Errorf("%q: unknown node type %d", n.Name, n.Type)
	}
	if n.Mode&^0o7777 != 0 {
		return fmt.Errorf("%q: invalid mode %#o", n.Name, n.Mode)
	}
	if (n.Type == nodeDir) != !n.Subtree.IsNull() {
		return fmt.Errorf("%q: subtree set on a %s", n.Name, n.Type)
	}
	if n.Type != nodeFile && (len(n.Content) > 0 || !n.Digest.IsNull() || n.Size != 0) {
		return fmt.Errorf("%q: content on a %s", n.Name, n.Type)
	}
	if n.Type == nodeFile && n.Digest.IsNull() {
		return fmt.Errorf("%q: file without digest", n.Name)
	}
	if (n.Type == nodeSymlink) != (n.LinkTarget != "") {
		return fmt.Errorf("%q: link target on a %s", n.Name, n.Type)
	}
	if strings.ContainsRune(n.LinkTarget, 0) || len(n.LinkTarget) > maxLinkLen {
		return fmt.Errorf("%q: invalid link target", n.Name)
	}
	return nil
}

func encodeTree(t *tree) []byte {
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
		if !n.Digest.IsNull() {
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

// decodeTree parses and validates a tree. Hostile input yields an error,
// never a panic, and allocations stay proportional to len(b).
func decodeTree(b []byte) (*tree, error) {
	r := &byteReader{b: b}
	v := r.bytes(1)
	if r.err == nil && v[0] != treeVersion {
		return nil, fmt.Errorf("decode tree: unsupported version %d", v[0])
	}
	count := r.uvarint(uint64(len(r.b) / 20))
	if r.err != nil {
		return nil, fmt.Errorf("decode tree: %w", r.err)
	}
	t := &tree{Nodes: make([]node, 0, count)}
	const m32 = 1<<32 - 1
	for i := uint64(0); i < count; i++ {
		var n node
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

// find returns the node called name, or nil.
func (t *tree) find(name string) *node {
	i := sort.Search(len(t.Nodes), func(i int) bool { return t.Nodes[i].Name >= name })
	if i < len(t.Nodes) && t.Nodes[i].Name == name {
		return &t.Nodes[i]
	}
	return nil
}

// loadTree loads, verifies and decodes a tree blob.
func (r *Repository) loadTree(ctx context.Context, id ID) (*tree, error) {
	b, err := r.loadBlob(ctx, TreeBlob, id, nil)
	if err != nil {
		return nil, fmt.Errorf("load tree: %w", err)
	}
	t, err := decodeTree(b)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", id, err)
	}
	return t, nil
}

// walkTree calls fn for every node below the tree id in depth-first order
// (a directory before its children), with slash paths relative to the
// tree's root. fn returning errSkipSubtree skips a directory's children.
func (r *Repository) walkTree(ctx context.Context, id ID, fn func(p string, n *node) error) error {
	return r.walkTreeAt(ctx, "", id, fn)
}

// errSkipSubtree tells walkTree not to descend into a directory.
var errSkipSubtree = errors.New("skip subtree")

func (r *Repository) walkTreeAt(ctx context.Context, prefix string, id ID, fn func(p string, n *node) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t, err := r.loadTree(ctx, id)
	if err != nil {
		if prefix != "" {
			return fmt.Errorf("%s: %w", prefix, err)
		}
		return err
	}
	for i := range t.Nodes {
		n := &t.Nodes[i]
		p := n.Name
		if prefix != "" {
			p = prefix + "/" + n.Name
		}
		err := fn(p, n)
		if errors.Is(err, errSkipSubtree) {
			continue
		}
		if err != nil {
			return err
		}
		if n.Type == nodeDir {
			if err := r.walkTreeAt(ctx, p, n.Subtree, fn); err != nil {
				return err
			}
		}
	}
	return nil
}
