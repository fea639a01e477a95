package metadata

import "testing"

// TestThreeWay covers every row of the three-way rule, with present and
// absent versions.
func TestThreeWay(t *testing.T) {
	a, b, c := []byte(`{"v":1}`), []byte(`{"v":2}`), []byte(`{"v":3}`)
	tests := []struct {
		name                     string
		initial, current, target []byte
		want                     PeerAction
	}{
		{"nothing changed", a, a, a, PeerNone},
		{"both changed it the same way", a, b, b, PeerNone},
		{"absent everywhere", nil, nil, nil, PeerNone},
		{"both created it the same", nil, a, a, PeerNone},
		{"both removed it", a, nil, nil, PeerNone},
		{"the peer changed it", a, a, b, PeerTake},
		{"the peer created it", nil, nil, a, PeerTake},
		{"the peer removed it", a, a, nil, PeerTake},
		{"we changed it", a, b, a, PeerKeep},
		{"we created it", nil, a, nil, PeerKeep},
		{"we removed it", a, nil, a, PeerKeep},
		{"both changed it differently", a, b, c, PeerConflict},
		{"both created it differently", nil, a, b, PeerConflict},
		{"we removed it, the peer changed it", a, nil, b, PeerConflict},
		{"we changed it, the peer removed it", a, b, nil, PeerConflict},
		{"empty is not absent", []byte{}, nil, []byte{}, PeerKeep},
	}
	for _, tc := range tests {
		if got := ThreeWay(tc.initial, tc.current, tc.target); got != tc.want {
			t.Errorf("%s: ThreeWay = %s, want %s", tc.name, got, tc.want)
		}
	}
}
