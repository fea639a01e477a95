package metadata

import "bytes"

// PeerAction is what a site-to-site sync does with one record that a peer
// site owns, decided from three versions of it: initial (as the last sync
// left it here), current (ours now) and target (the peer's now). A nil
// version means the record is absent there.
type PeerAction string

// The actions of the three-way rule (KEYS.md, "Sync, site to site").
const (
	// PeerNone: ours is already the peer's; nothing to do.
	PeerNone PeerAction = "none"
	// PeerTake: only the peer changed it since the last sync; take the
	// peer's (a nil target: the peer removed it).
	PeerTake PeerAction = "take"
	// PeerKeep: only we changed it since the last sync, and the peer did
	// not: keep ours, and report it, since the peer owns the record.
	PeerKeep PeerAction = "keep"
	// PeerConflict: both changed it, differently: take the peer's (the
	// owner's) and report the conflict with both versions.
	PeerConflict PeerAction = "conflict"
)

// ThreeWay decides the action for one record from its initial, current
// and target versions (the encoded records; nil = absent).
func ThreeWay(initial, current, target []byte) PeerAction {
	same := func(a, b []byte) bool {
		if a == nil || b == nil {
			return a == nil && b == nil
		}
		return bytes.Equal(a, b)
	}
	switch {
	case same(target, current):
		return PeerNone
	case same(initial, target):
		return PeerKeep
	case same(initial, current):
		return PeerTake
	default:
		return PeerConflict
	}
}
