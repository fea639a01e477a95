package agent

import (
	"context"
	"net/http"

	"github.com/custos-backup/custos/metadata"
)

// FleetReport is what the catalog knows about every host of a site: the
// jobs running now (leased: a dead agent's vanish) and the newest outcome
// of every kind and dataset of every host.
type FleetReport struct {
	Running  []metadata.JobStatus `json:"running"`
	Outcomes []*metadata.Outcome  `json:"outcomes"`
}

// Fleet reads the fleet report from a catalog store.
func Fleet(ctx context.Context, st *metadata.EtcdStore) (*FleetReport, error) {
	running, err := st.ActiveJobs(ctx)
	if err != nil {
		return nil, err
	}
	outcomes, err := st.LastOutcomes(ctx, "")
	if err != nil {
		return nil, err
	}
	r := &FleetReport{Running: running, Outcomes: outcomes}
	if r.Running == nil {
		r.Running = []metadata.JobStatus{}
	}
	if r.Outcomes == nil {
		r.Outcomes = []*metadata.Outcome{}
	}
	return r, nil
}

// serveFleet is GET /api/fleet.
func (a *Agent) serveFleet(w http.ResponseWriter, r *http.Request) {
	rep, err := Fleet(r.Context(), a.catalog.Store)
	if err != nil {
		httpError(w, http.StatusBadGateway, "catalog: "+err.Error())
		return
	}
	writeJSON(w, rep)
}
