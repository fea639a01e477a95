package metadata

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// leaseID returns the job status lease, granting it (and starting its
// keep-alive) when there is none or the old one was lost.
func (s *EtcdStore) leaseID(ctx context.Context) (clientv3.LeaseID, error) {
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	if s.noLease {
		return 0, ErrClosed
	}
	if s.lease != 0 {
		return s.lease, nil
	}
	ttl := int64((s.opts.LeaseTTL + time.Second - 1) / time.Second)
	g, err := s.cli.Grant(ctx, ttl)
	if err != nil {
		return 0, fmt.Errorf("metadata: grant job status lease: %w", err)
	}
	ch, err := s.cli.KeepAlive(s.runCtx, g.ID)
	if err != nil {
		return 0, fmt.Errorf("metadata: keep job status lease %x alive: %w", int64(g.ID), err)
	}
	s.lease = g.ID
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for range ch {
			// Drain keep-alive responses.
		}
		// The channel closes when the lease expired or the store closes;
		// the next update grants a new lease.
		s.leaseMu.Lock()
		if s.lease == g.ID {
			s.lease = 0
		}
		s.leaseMu.Unlock()
	}()
	return g.ID, nil
}

func (s *EtcdStore) dropLease(id clientv3.LeaseID) {
	s.leaseMu.Lock()
	if s.lease == id {
		s.lease = 0
	}
	s.leaseMu.Unlock()
}

// PutJobStatus replaces the active jobs of host with jobs. The entries are
// bound to the store's lease, which the store keeps alive; when the process
// dies they vanish after LeaseTTL, and Close removes them at once.
func (s *EtcdStore) PutJobStatus(ctx context.Context, host string, jobs []JobStatus) error {
	if err := checkName("host", host, true); err != nil {
		return err
	}
	for _, j := range jobs {
		if err := checkName("job id", j.JobID, true); err != nil {
			return fmt.Errorf("job status of host %s: %w", host, err)
		}
	}
	if s.closed() {
		return ErrClosed
	}
	for attempt := 0; ; attempt++ {
		err := s.putJobStatus(ctx, host, jobs)
		if err == nil {
			return nil
		}
		if attempt == 0 && errors.Is(err, rpctypes.ErrLeaseNotFound) {
			continue // lease expired while etcd was away: new lease, retry once
		}
		return fmt.Errorf("metadata: put job status of host %s: %w", host, err)
	}
}

func (s *EtcdStore) putJobStatus(ctx context.Context, host string, jobs []JobStatus) error {
	id, err := s.leaseID(ctx)
	if err != nil {
		return err
	}
	p := s.k.jobsPrefix(host)
	old, err := s.kv.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return err
	}
	keep := make(map[string]bool, len(jobs))
	var ops []clientv3.Op
	for _, j := range jobs {
		j.Host = host
		k := s.k.job(host, j.JobID)
		keep[k] = true
		ops = append(ops, clientv3.OpPut(k, mustJSON(j), clientv3.WithLease(id)))
	}
	for _, kv := range old.Kvs {
		if !keep[string(kv.Key)] {
			ops = append(ops, clientv3.OpDelete(string(kv.Key)))
		}
	}
	for lo := 0; lo < len(ops); lo += s.opts.MaxTxnOps {
		hi := min(lo+s.opts.MaxTxnOps, len(ops))
		if _, err := s.kv.Txn(ctx).Then(ops[lo:hi]...).Commit(); err != nil {
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				s.dropLease(id)
			}
			return err
		}
	}
	return nil
}

// StartUpdates publishes fn() as the active jobs of Options.Host now and
// every interval (default 5s) until ctx is done or the store is closed.
// Errors are logged; the next tick tries again.
func (s *EtcdStore) StartUpdates(ctx context.Context, fn func() []JobStatus, interval time.Duration) {
	if interval <= 0 {
		interval = 5 * time.Second
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(s.runCtx, cancel)
		defer stop()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			uctx, ucancel := context.WithTimeout(ctx, max(interval, s.opts.WriteTimeout))
			if err := s.PutJobStatus(uctx, s.opts.Host, fn()); err != nil && ctx.Err() == nil {
				s.log.Warn("job status update failed", "host", s.opts.Host, "err", err)
			}
			ucancel()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// ActiveJobs returns the published jobs of all live agents, by host and job
// id.
func (s *EtcdStore) ActiveJobs(ctx context.Context) ([]JobStatus, error) {
	p := s.k.p + nsJobs
	var out []JobStatus
	err := s.scan(ctx, p, prefixEnd(p), false, func(key, val []byte) (string, bool, error) {
		var j JobStatus
		if err := json.Unmarshal(val, &j); err != nil {
			return "", false, fmt.Errorf("decode job status %q: %w", key, err)
		}
		out = append(out, j)
		return "", false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("metadata: active jobs: %w", err)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Host != out[j].Host {
			return out[i].Host < out[j].Host
		}
		return out[i].JobID < out[j].JobID
	})
	return out, nil
}
