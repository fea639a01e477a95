package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/repository/backend/location"
)

// Problem is one line of the status page's health banner: what is wrong
// and since when (zero when unknown).
type Problem struct {
	What  string    `json:"what"`
	Since time.Time `json:"since,omitzero"`
	Error string    `json:"error,omitempty"`
}

// RepositoryPanel is what the status page shows of one repository: where
// it is, what the catalog says it holds, and its last fixity evidence.
type RepositoryPanel struct {
	Name     string `json:"name"`
	Location string `json:"location"`
	// From the catalog's dataset versions stored here (all hosts);
	// zero for a repository that only receives replicas.
	Versions     int     `json:"versions"`
	LogicalBytes int64   `json:"logical_bytes"`
	AddedBytes   int64   `json:"added_bytes"`
	Ratio        float64 `json:"dedup_ratio,omitempty"` // logical / added
	// Fixity evidence from the catalog.
	PacksVerified int       `json:"packs_verified"`
	PacksDamaged  int       `json:"packs_damaged"`
	LastFixity    time.Time `json:"last_fixity,omitzero"`
	FixityError   string    `json:"fixity_error,omitempty"`
}

// healthView is the catalog part of the banner and the repository panel,
// cached like the other catalog parts of the report.
type healthView struct {
	failing      map[string]time.Time // "source/dataset" → first failure of the current run of failures
	repositories []RepositoryPanel
}

// loadHealth reads what the banner and the panel need from the catalog:
// for every dataset whose last backup failed, how long it has failed, and
// per repository its totals and fixity evidence.
func (a *Agent) loadHealth(ctx context.Context, cfg *Config, outcomes []*metadata.Outcome) (healthView, error) {
	st := a.catalog.Store
	v := healthView{failing: map[string]time.Time{}}
	for _, o := range outcomes {
		if o.Kind != "ingest" || o.Result == "ok" || o.Result == "canceled" {
			continue
		}
		since := o.End
		hist, err := st.Outcomes(ctx, o.Host, o.Kind, o.Source, o.Dataset, 0)
		if err != nil {
			return v, err
		}
		for _, h := range hist { // newest first
			if h.Result == "ok" {
				break
			}
			since = h.End
		}
		v.failing[o.Source+"/"+o.Dataset] = since
	}
	var totals map[string]metadata.RepositoryTotals
	if a.catalog.Index != nil {
		totals, _ = a.catalog.Index.Totals(ctx)
	}
	for _, spec := range cfg.Repositories {
		p := RepositoryPanel{Name: spec.Name, Location: spec.URL}
		if loc, err := location.Parse(spec.URL); err == nil {
			p.Location = loc.String()
		}
		if t, ok := totals[spec.Name]; ok {
			p.Versions, p.LogicalBytes, p.AddedBytes = t.Versions, t.LogicalBytes, t.AddedBytes
			if t.AddedBytes > 0 {
				p.Ratio = float64(t.LogicalBytes) / float64(t.AddedBytes)
			}
		}
		results, err := st.ListFixityResults(ctx, spec.Name)
		if err != nil {
			p.FixityError = err.Error()
		}
		for _, r := range results {
			if r.OK {
				p.PacksVerified++
			} else {
				p.PacksDamaged++
			}
			if r.Time.After(p.LastFixity) {
				p.LastFixity = r.Time
			}
		}
		v.repositories = append(v.repositories, p)
	}
	return v, nil
}

// problems builds the health banner of a report.
func problems(r *StatusReport, hv healthView) []Problem {
	out := []Problem{}
	for _, o := range r.Outcomes {
		if since, bad := hv.failing[o.Source+"/"+o.Dataset]; bad && o.Kind == "ingest" {
			out = append(out, Problem{What: fmt.Sprintf("backups of %s/%s fail", o.Source, o.Dataset), Since: since, Error: o.Error})
		}
	}
	for _, p := range hv.repositories {
		if p.PacksDamaged > 0 {
			out = append(out, Problem{What: fmt.Sprintf("repository %s: %d damaged pack(s) not healed", p.Name, p.PacksDamaged)})
		}
	}
	if n := len(r.SpoolFailed); n > 0 {
		out = append(out, Problem{What: fmt.Sprintf("%d catalog record(s) could not be written and were set aside", n), Error: r.SpoolFailed[0].Reason})
	}
	if r.CatalogError != "" {
		out = append(out, Problem{What: "the catalog cannot be read", Error: r.CatalogError})
	}
	return out
}
