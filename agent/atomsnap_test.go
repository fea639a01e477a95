package agent

import (
	"strings"
	"testing"

	"github.com/custos-backup/custos/handlers"
	"github.com/custos-backup/custos/repository"
)

// TestAtomSnapshots: the catalog points each atom at the snapshot the
// handler named for it, whatever the order, and refuses what does not add
// up.
func TestAtomSnapshots(t *testing.T) {
	snap := func(b byte) *repository.Snapshot { return &repository.Snapshot{ID: repository.ID{b}} }
	s1, s2 := snap(1), snap(2)
	atoms := []handlers.Atom{{Name: "a"}, {Name: "b"}}
	cases := []struct {
		name    string
		stored  []handlers.Stored
		want    map[string]*repository.Snapshot
		wantErr string
	}{
		{"one for all", []handlers.Stored{{Snapshot: s1, Atoms: []string{"a", "b"}}}, map[string]*repository.Snapshot{"a": s1, "b": s1}, ""},
		{"one each, out of order", []handlers.Stored{{Snapshot: s2, Atoms: []string{"b"}}, {Snapshot: s1, Atoms: []string{"a"}}}, map[string]*repository.Snapshot{"a": s1, "b": s2}, ""},
		{"an atom missing", []handlers.Stored{{Snapshot: s1, Atoms: []string{"a"}}}, nil, `no snapshot for atom "b"`},
		{"an atom twice", []handlers.Stored{{Snapshot: s1, Atoms: []string{"a", "b"}}, {Snapshot: s2, Atoms: []string{"b"}}}, nil, `two snapshots for atom "b"`},
		{"an unknown atom", []handlers.Stored{{Snapshot: s1, Atoms: []string{"a", "b", "c"}}}, nil, `atom "c", which the dataset does not have`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := atomSnapshots(tc.stored, atoms)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for name, s := range tc.want {
				if got[name] != s.ID.String() {
					t.Errorf("atom %s -> %s, want %s", name, got[name], s.ID)
				}
			}
		})
	}
}
