package metadata

import (
	"errors"
	"slices"
	"strconv"
	"testing"
	"time"
)

// TestAllDatasetVersions lists every version of every dataset, with its
// atoms, filtered by host, and reads single versions by key.
func TestAllDatasetVersions(t *testing.T) {
	ctx := ctxT(t)
	s := newSharedStore(t, Options{})
	ts := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	add := func(id, host string, at time.Time, d *Dataset) {
		t.Helper()
		if err := s.AddDataset(ctx, &Backup{ID: id, Timestamp: at, Host: host}, d); err != nil {
			t.Fatal(err)
		}
	}
	add("b1", "h1", ts, atomsDS("s1", "a", "b"))
	add("b2", "h1", ts.Add(time.Hour), atomsDS("s2", "a"))
	add("b3", "h2", ts.Add(2*time.Hour), atomsDS("s3", "c"))
	other := atomsDS("s4", "z")
	other.Name = "other"
	add("b1", "h1", ts, other)

	tests := []struct {
		host string
		want []string // backup id/dataset:atoms
	}{
		{"", []string{"b3/ds:1", "b2/ds:1", "b1/ds:2", "b1/other:1"}},
		{"h1", []string{"b2/ds:1", "b1/ds:2", "b1/other:1"}},
		{"h2", []string{"b3/ds:1"}},
		{"nobody", nil},
	}
	for _, tc := range tests {
		got, err := s.AllDatasetVersions(ctx, tc.host)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, b := range got {
			d := b.Datasets[0]
			if len(d.Atoms) != d.AtomCount {
				t.Errorf("host %q: %s/%s has %d atoms filled in, atom_count %d", tc.host, b.ID, d.Name, len(d.Atoms), d.AtomCount)
			}
			names = append(names, b.ID+"/"+d.Name+":"+strconv.Itoa(len(d.Atoms)))
		}
		if !slices.Equal(names, tc.want) {
			t.Errorf("host %q: got %v, want %v", tc.host, names, tc.want)
		}
	}

	v, err := s.GetDatasetVersion(ctx, "src", "ds", ts, "b1")
	if err != nil {
		t.Fatal(err)
	}
	if v.ID != "b1" || v.Host != "h1" || len(v.Datasets) != 1 || len(v.Datasets[0].Atoms) != 2 {
		t.Errorf("GetDatasetVersion: %+v", v)
	}
	if _, err := s.GetDatasetVersion(ctx, "src", "ds", ts.Add(time.Second), "b1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a version at another time: %v, want ErrNotFound", err)
	}
}
