package metadata

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// nsOutcome holds job outcomes: P outcome/<host>⟂<kind>⟂<source>/<dataset>⟂<rt>⟂<jobid>.
const nsOutcome = "outcome/"

// OutcomesKept is how many outcomes are kept per host, kind and dataset;
// older ones are deleted when a new one is written.
const OutcomesKept = 20

// Outcome is what became of one finished job (any kind): the record that
// outlives the agent's memory, so that a restarted agent and a fleet view
// know every dataset's last result.
type Outcome struct {
	Host     string    `json:"host"`
	Kind     string    `json:"kind"`
	Source   string    `json:"source,omitempty"`
	Dataset  string    `json:"dataset,omitempty"`
	JobID    string    `json:"job_id"`
	Start    time.Time `json:"start,omitzero"`
	End      time.Time `json:"end"`
	Result   string    `json:"result"`
	Error    string    `json:"error,omitempty"`
	Bytes    int64     `json:"bytes"`
	Attempts int       `json:"attempts"`
}

func (k keys) outcomeHost(host string) string { return k.p + nsOutcome + host + sep }

func (k keys) outcomeGroup(o *Outcome) string {
	return k.outcomeHost(o.Host) + o.Kind + sep + o.Source + "/" + o.Dataset + sep
}

func (k keys) outcome(o *Outcome) string { return k.outcomeGroup(o) + revTime(o.End) + sep + o.JobID }

// PutOutcome records a job's outcome and deletes the outcomes of the same
// host, kind and dataset beyond the newest OutcomesKept.
func (s *EtcdStore) PutOutcome(ctx context.Context, o *Outcome) error {
	if o == nil {
		return fmt.Errorf("%w: nil outcome", ErrInvalid)
	}
	for _, f := range []struct{ kind, v string }{{"host", o.Host}, {"kind", o.Kind}, {"job", o.JobID}} {
		if err := checkName(f.kind, f.v, true); err != nil {
			return fmt.Errorf("outcome: %w", err)
		}
	}
	for _, f := range []struct{ kind, v string }{{"source", o.Source}, {"dataset", o.Dataset}} {
		if f.v == "" {
			continue
		}
		if err := checkName(f.kind, f.v, false); err != nil {
			return fmt.Errorf("outcome of job %s: %w", o.JobID, err)
		}
	}
	if o.End.IsZero() {
		return fmt.Errorf("%w: outcome of job %s has no end time", ErrInvalid, o.JobID)
	}
	if _, err := s.kv.Put(ctx, s.k.outcome(o), mustJSON(o)); err != nil {
		return fmt.Errorf("metadata: put outcome of job %s: %w", o.JobID, err)
	}
	// Trim: keys of the group sort newest first, so everything from the
	// (OutcomesKept+1)th key on goes.
	group := s.k.outcomeGroup(o)
	resp, err := s.kv.Get(ctx, group, clientv3.WithRange(prefixEnd(group)), clientv3.WithKeysOnly(), clientv3.WithLimit(OutcomesKept+1))
	if err != nil {
		return fmt.Errorf("metadata: trim outcomes of %s/%s: %w", o.Source, o.Dataset, err)
	}
	if len(resp.Kvs) > OutcomesKept {
		from := string(resp.Kvs[OutcomesKept].Key)
		if _, err := s.kv.Delete(ctx, from, clientv3.WithRange(prefixEnd(group))); err != nil {
			return fmt.Errorf("metadata: trim outcomes of %s/%s: %w", o.Source, o.Dataset, err)
		}
	}
	return nil
}

// LastOutcomes returns the newest outcome of every host, kind and dataset
// (of one host, or of all when host is ""), in key order: by host, kind,
// source and dataset.
func (s *EtcdStore) LastOutcomes(ctx context.Context, host string) ([]*Outcome, error) {
	prefix := s.k.p + nsOutcome
	if host != "" {
		prefix = s.k.outcomeHost(host)
	}
	var out []*Outcome
	lastGroup := ""
	err := s.scan(ctx, prefix, prefixEnd(prefix), false, func(key, val []byte) (string, bool, error) {
		o := new(Outcome)
		if err := json.Unmarshal(val, o); err != nil {
			return "", false, fmt.Errorf("decode %q: %w", key, err)
		}
		if g := s.k.outcomeGroup(o); g != lastGroup {
			lastGroup = g
			out = append(out, o)
		}
		return "", false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("metadata: list outcomes: %w", err)
	}
	return out, nil
}

// Outcomes returns up to limit (<= 0: all kept) outcomes of one host, kind
// and dataset, newest first.
func (s *EtcdStore) Outcomes(ctx context.Context, host, kind, source, dataset string, limit int) ([]*Outcome, error) {
	var out []*Outcome
	prefix := s.k.outcomeGroup(&Outcome{Host: host, Kind: kind, Source: source, Dataset: dataset})
	if err := listJSON(ctx, s, prefix, limit, &out); err != nil {
		return nil, fmt.Errorf("metadata: outcomes of %s/%s on %s: %w", source, dataset, host, err)
	}
	return out, nil
}
