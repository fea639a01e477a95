package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata"
)

// PeerSpec is one entry of agent.yml's peers: another site's catalog,
// whose records (those of Hosts) the sync pulls into this one.
type PeerSpec struct {
	Name string
	// Endpoints of the peer's etcd cluster; none: the peer is another key
	// prefix of this site's own catalog.
	EtcdClientSpec
	// Prefix of the peer's keys; default "/custos/" on its own cluster
	// (required, and not this site's, without Endpoints).
	Prefix string
	// Hosts are the hosts whose records the peer owns.
	Hosts []string
	// Schedule of a sync with this peer alone; "" = with the sync job
	// (sync.schedule) and on demand.
	Schedule string
	// Overlap is passed to metadata.PeerSyncOptions (0: its default).
	Overlap int64

	node  *yaml.Node
	field string
}

// Peer returns the named peer, or nil.
func (cfg *Config) Peer(name string) *PeerSpec {
	for _, p := range cfg.Peers {
		if p.Name == name {
			return p
		}
	}
	return nil
}

func (cfg *Config) decodePeers(d *decoder, v *yaml.Node, f string) {
	seen := map[string]bool{}
	d.sequence(v, f, func(_ int, item *yaml.Node, f string) {
		p := cfg.decodePeer(d, item, f)
		if p == nil {
			return
		}
		if seen[p.Name] {
			d.errorf(item, f+".name", "peer %q is defined more than once", p.Name)
			return
		}
		seen[p.Name] = true
		cfg.Peers = append(cfg.Peers, p)
	})
}

func (cfg *Config) decodePeer(d *decoder, n *yaml.Node, f string) *PeerSpec {
	p := &PeerSpec{node: n, field: f}
	keys := d.mapping(n, f, p.EtcdClientSpec.decodeFields(d, cfg.Dir, fields{
		"name": func(v *yaml.Node, f string) {
			if d.str(v, f, &p.Name) {
				checkName(d, v, f, p.Name)
			}
		},
		"prefix": func(v *yaml.Node, f string) {
			if d.str(v, f, &p.Prefix) && !strings.HasSuffix(p.Prefix, "/") {
				d.errorf(v, f, "a key prefix must end with '/', got %q", p.Prefix)
			}
		},
		"hosts": func(v *yaml.Node, f string) {
			d.strList(v, f, &p.Hosts)
			for _, h := range p.Hosts {
				if h == "" || strings.ContainsAny(h, "\x00") {
					d.errorf(v, f, "host %q is not a host name", h)
				}
			}
		},
		"schedule": func(v *yaml.Node, f string) {
			if d.str(v, f, &p.Schedule) && p.Schedule != "" {
				if err := checkSchedule(p.Schedule); err != nil {
					d.errorf(v, f, "%v (\"\" syncs it with the sync job and on demand)", err)
				}
			}
		},
		"overlap_revisions": func(v *yaml.Node, f string) {
			var n int
			if d.integer(v, f, &n) {
				if n < 0 {
					d.errorf(v, f, "the overlap cannot be negative, got %d", n)
				}
				p.Overlap = int64(n)
			}
		},
	}))
	if n.Kind != yaml.MappingNode {
		return nil
	}
	if keys["name"] == nil {
		d.errorf(n, join(f, "name"), "missing: every peer needs a name")
	}
	if len(p.Hosts) == 0 {
		d.errorf(n, join(f, "hosts"), "missing: which hosts' records does peer %q own?", p.Name)
	}
	if len(p.Endpoints) == 0 {
		for _, k := range []string{"ca_file", "cert_file", "key_file", "server_name", "username", "password_file"} {
			if keys[k] != nil {
				d.errorf(keys[k], join(f, k), "only for a peer on its own etcd cluster (set endpoints)")
			}
		}
		if p.Prefix == "" {
			d.errorf(n, join(f, "endpoints"), "missing: peer %q needs the endpoints of its etcd cluster, or a prefix of this site's catalog", p.Name)
		}
	} else if p.Prefix == "" {
		p.Prefix = "/custos/"
	}
	if (p.CertFile == "") != (p.KeyFile == "") {
		d.errorf(n, join(f, "cert_file"), "cert_file and key_file go together")
	}
	if (p.Username == "") != (len(p.Password.b) == 0) {
		d.errorf(n, join(f, "username"), "username and password_file go together")
	}
	return p
}

// checkPeers checks what needs the whole agent.yml: a peer never owns this
// host (its records are this site's), two peers never own one host, and a
// peer on this catalog has a prefix of its own.
func (cfg *Config) checkPeers(d *decoder) {
	own := cfg.MetaDB.Prefix
	if own == "" {
		own = "/custos/"
	}
	owner := map[string]string{}
	for _, p := range cfg.Peers {
		for _, h := range p.Hosts {
			switch {
			case h == cfg.Hostname:
				d.errorf(p.node, join(p.field, "hosts"), "peer %q lists %s, this host: its records are this site's, and a sync never changes them", p.Name, h)
			case owner[h] != "":
				d.errorf(p.node, join(p.field, "hosts"), "host %s is owned by peer %q already; a host belongs to one site", h, owner[h])
			default:
				owner[h] = p.Name
			}
		}
		if len(p.Endpoints) == 0 && p.Prefix == own {
			d.errorf(p.node, join(p.field, "prefix"), "peer %q has this site's own key prefix %s: it would be this catalog", p.Name, own)
		}
	}
}

// openPeer opens the catalog of a peer: its own cluster, or a prefix of
// this site's catalog (own). close releases what it opened.
func openPeer(ctx context.Context, cfg *Config, own *metadata.EtcdStore, spec *PeerSpec, log *slog.Logger) (*metadata.EtcdStore, func(), error) {
	opts := metadata.Options{Prefix: spec.Prefix, Host: cfg.Hostname, Logger: log}
	if len(spec.Endpoints) == 0 {
		st, err := metadata.NewStore(own.Client(), opts)
		if err != nil {
			return nil, nil, fmt.Errorf("peer %s: %w", spec.Name, err)
		}
		return st, func() { st.Close() }, nil
	}
	mc := spec.metadataConfig()
	conn, err := metadata.Connect(ctx, mc)
	if err != nil {
		return nil, nil, fmt.Errorf("peer %s: open its catalog at %v: %w", spec.Name, spec.Endpoints, err)
	}
	st, err := metadata.NewStore(conn.Client, opts)
	if err != nil {
		return nil, nil, errors.Join(fmt.Errorf("peer %s: %w", spec.Name, err), conn.Close())
	}
	return st, func() { st.Close(); conn.Close() }, nil
}

// PeerOptions tune SyncPeer.
type PeerOptions struct {
	Report bool
	Full   bool
	// ClearReports deletes the peer's recorded reports (conflicts,
	// records kept here) before the sync.
	ClearReports bool
}

// SyncPeer syncs this site's catalog with peer name (site to site): see
// metadata.EtcdStore.SyncPeer.
func SyncPeer(ctx context.Context, cfg *Config, own *metadata.EtcdStore, name string, opts PeerOptions, log *slog.Logger) (*metadata.PeerSyncResult, error) {
	spec := cfg.Peer(name)
	if spec == nil {
		if len(cfg.Peers) == 0 {
			return nil, fmt.Errorf("no peer %q: the configuration has no peers", name)
		}
		return nil, fmt.Errorf("no peer %q in the configuration (peers: %s)", name, strings.Join(peerNames(cfg), ", "))
	}
	if log == nil {
		log = slog.Default()
	}
	if opts.ClearReports && !opts.Report {
		if _, err := own.ClearPeerReports(ctx, name); err != nil {
			return nil, err
		}
	}
	peer, closePeer, err := openPeer(ctx, cfg, own, spec, log)
	if err != nil {
		return nil, err
	}
	defer closePeer()
	return own.SyncPeer(ctx, metadata.Peer{Name: name, Store: peer, Hosts: spec.Hosts},
		metadata.PeerSyncOptions{Report: opts.Report, Full: opts.Full, Overlap: spec.Overlap})
}

func peerNames(cfg *Config) []string {
	out := []string{}
	for _, p := range cfg.Peers {
		out = append(out, p.Name)
	}
	return out
}

// peerScheduleName is the scheduler entry of a peer with a schedule.
func peerScheduleName(name string) string { return "sync-peer:" + name }

// peerEntries schedules the peers that have a schedule of their own.
func (a *Agent) peerEntries(rc *RuntimeContext) []jobs.Entry {
	var out []jobs.Entry
	for _, p := range rc.Config.Peers {
		if p.Schedule == "" {
			continue
		}
		name := p.Name
		out = append(out, jobs.Entry{Name: peerScheduleName(name), Schedule: p.Schedule, Run: func(context.Context) { a.submit(a.newPeerSyncJob(name)) }})
	}
	return out
}

// newPeerSyncJob syncs with one peer, on the sync queue.
func (a *Agent) newPeerSyncJob(name string) jobs.Job {
	return jobs.New(jobs.Info{
		Kind:        "sync",
		LockKey:     "sync-peer:" + name,
		IfLocked:    jobs.LockSkip,
		Description: "sync the catalog with peer " + name,
	}, func(ctx context.Context) error {
		return a.syncPeer(ctx, name)
	})
}

// syncPeer runs one peer sync and updates what the status says of it.
func (a *Agent) syncPeer(ctx context.Context, name string) error {
	res, err := SyncPeer(ctx, a.cm.Current().Config, a.catalog.Store, name, PeerOptions{}, jobs.Logger(ctx))
	if res != nil {
		jobs.Logger(ctx).Info("peer sync done", "peer", name, "full", res.Full, "compared", res.Compared,
			"taken", res.Count(metadata.PeerTake), "kept", res.Count(metadata.PeerKeep), "conflicts", res.Count(metadata.PeerConflict))
		for _, c := range res.Changes {
			if c.Action == metadata.PeerConflict || c.Skipped != "" {
				jobs.Logger(ctx).Warn("peer sync", "peer", name, "action", c.Action, "dataset", c.Source+"/"+c.Dataset,
					"backup", c.BackupID, "done", c.Done, "skipped", c.Skipped)
			}
		}
	}
	a.setPeerWarnings(name, peerWarnings(name, res, err))
	a.backups.invalidate()
	return err
}

// syncPeers syncs with every peer after the repositories (the sync job).
func (a *Agent) syncPeers(ctx context.Context) error {
	var errs []error
	for _, p := range a.cm.Current().Config.Peers {
		if err := a.syncPeer(ctx, p.Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// peerWarnings is what the status says after a sync with a peer: the
// reports recorded for it (conflicts, records kept here), and a failure.
func peerWarnings(name string, res *metadata.PeerSyncResult, err error) []string {
	var out []string
	if res != nil {
		out = recordedWarnings(name, res.Recorded)
	}
	if err != nil {
		out = append(out, fmt.Sprintf("the last sync with peer %s failed: %v", name, err))
	}
	return out
}

func recordedWarnings(name string, recorded []metadata.PeerChange) []string {
	var conflicts, kept, refused int
	for _, c := range recorded {
		switch {
		case c.Action == metadata.PeerKeep:
			kept++
		case c.Skipped != "":
			refused++
		default:
			conflicts++
		}
	}
	var out []string
	see := fmt.Sprintf("custos sync --peer %s --report lists them, --clear-reports forgets them", name)
	if conflicts > 0 {
		out = append(out, fmt.Sprintf("peer %s: %d conflict(s): records both sites changed; the peer's version was taken (%s)", name, conflicts, see))
	}
	if refused > 0 {
		out = append(out, fmt.Sprintf("peer %s: %d record(s) of the peer could not be taken (the same backup recorded here by this site, or refused) (%s)", name, refused, see))
	}
	if kept > 0 {
		out = append(out, fmt.Sprintf("peer %s: %d record(s) the peer owns were changed here and kept (%s)", name, kept, see))
	}
	return out
}

// loadPeerWarnings reads the reports recorded for every peer, so the
// status says them from the start.
func (a *Agent) loadPeerWarnings(ctx context.Context) {
	for _, p := range a.cm.Current().Config.Peers {
		rec, err := a.catalog.Store.PeerReports(ctx, p.Name)
		if err != nil {
			a.log.Warn("cannot read the reports of a peer sync", "peer", p.Name, "err", err)
			continue
		}
		a.setPeerWarnings(p.Name, recordedWarnings(p.Name, rec))
	}
}

func (a *Agent) setPeerWarnings(name string, w []string) {
	a.warnMu.Lock()
	if a.peerWarnings == nil {
		a.peerWarnings = map[string][]string{}
	}
	a.peerWarnings[name] = w
	a.warnMu.Unlock()
	a.changes.notify()
}

// syncJob is the job of POST /api/jobs {"kind":"sync"}: with a peer, the
// sync with that peer alone.
func (a *Agent) syncJob(req JobRequest) (jobs.Job, int, error) {
	if req.Peer == "" {
		return a.newSyncJob(), 0, nil
	}
	if a.cm.Current().Config.Peer(req.Peer) == nil {
		return nil, http.StatusNotFound, fmt.Errorf("no peer %q in the configuration", req.Peer)
	}
	return a.newPeerSyncJob(req.Peer), 0, nil
}
