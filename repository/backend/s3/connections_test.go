package s3

import "testing"

// TestConnections: readers keep Options.Connections requests in flight,
// DefaultConnections when it is not set.
func TestConnections(t *testing.T) {
	for _, c := range []struct{ set, want int }{{0, DefaultConnections}, {4, 4}, {-1, DefaultConnections}} {
		b := &Backend{opts: Options{Connections: c.set}}
		if got := b.Connections(); got != c.want {
			t.Errorf("Connections with Options.Connections %d = %d, want %d", c.set, got, c.want)
		}
	}
}
