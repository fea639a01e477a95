package metadata

import "context"

// RepositoryTotals sums, per repository, what the catalog's dataset
// versions say about it: how many versions, their logical bytes, and the
// bytes each backup added (after dedup and compression). Added bytes are
// what a repository holds before prune; logical over added is its dedup
// and compression ratio.
type RepositoryTotals struct {
	Versions     int   `json:"versions"`
	LogicalBytes int64 `json:"logical_bytes"`
	AddedBytes   int64 `json:"added_bytes"`
}

// Totals returns the totals per repository name from the index, as of
// etcd's current revision; ok is false when the index is not live.
func (x *Index) Totals(ctx context.Context) (totals map[string]RepositoryTotals, ok bool) {
	if err := x.catchUp(ctx); err != nil {
		return nil, false
	}
	defer x.mu.Unlock()
	totals = map[string]RepositoryTotals{}
	for _, r := range x.recs {
		d := r.rec.Dataset
		t := totals[d.Repository]
		t.Versions++
		t.LogicalBytes += d.TotalBytes
		t.AddedBytes += d.BytesAdded
		totals[d.Repository] = t
	}
	return totals, true
}
