package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/custos-backup/custos/handlers"
	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/repository"
	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/location"
)

// SyncStore is what the sync needs from the catalog; *metadata.EtcdStore
// has it.
type SyncStore interface {
	AllDatasetVersions(ctx context.Context, host string) ([]*metadata.Backup, error)
	GetDatasetVersion(ctx context.Context, source, dataset string, ts time.Time, backupID string) (*metadata.Backup, error)
	AddDataset(ctx context.Context, b *metadata.Backup, d *metadata.Dataset) error
	RemoveDatasetVersion(ctx context.Context, source, dataset string, ts time.Time, backupID string) (bool, error)
}

var _ SyncStore = (*metadata.EtcdStore)(nil)

// SyncOptions tune a sync of the catalog with the repositories.
type SyncOptions struct {
	// Report only says what the sync would change.
	Report bool
	// Repositories limits the sync to these repositories (names); nil
	// means every configured one.
	Repositories []string
	// Forgotten are snapshot ids a retention run has just removed: records
	// naming them are handled whatever host wrote them (the sync otherwise
	// touches only this host's records).
	Forgotten map[string]bool
	// AllowEmpty lets the sync remove the records of a repository that
	// holds no snapshot at all (otherwise it refuses: a wrong url or an
	// unmounted disk looks just like that).
	AllowEmpty bool
	// Before, when set, ignores repository versions taken at or after
	// it (the agent's start check: backups of this run may be between
	// their snapshot and their record).
	Before time.Time
}

// Sync actions.
const (
	SyncAdd     = "add"     // a version the repository holds and the catalog lacks
	SyncRewrite = "rewrite" // a record that names snapshots that are gone or are not its own
	SyncRemove  = "remove"  // a record whose snapshots are all gone
)

// SyncChange is one change a sync makes (or, with --report, would make) to
// the catalog.
type SyncChange struct {
	Action     string    `json:"action"`
	Source     string    `json:"source"`
	Dataset    string    `json:"dataset"`
	BackupID   string    `json:"backup_id"`
	Host       string    `json:"host"`
	Time       time.Time `json:"time"`
	Repository string    `json:"repository"`
	Snapshots  []string  `json:"snapshots,omitempty"` // of the new record (add, rewrite) or the removed one
	Atoms      int       `json:"atoms"`
	Reason     string    `json:"reason"`
	// Inexact says what of a rebuilt record could not be recovered from
	// the repository exactly.
	Inexact string `json:"inexact,omitempty"`
	// Done: the change was made. Skipped says why not, when it was not
	// (report mode leaves both empty).
	Done    bool   `json:"done"`
	Skipped string `json:"skipped,omitempty"`

	backup  *metadata.Backup  // the record to write (add, rewrite)
	rec     *metadata.Dataset //
	was     []string          // the snapshot ids of the record it replaces
	wasTime time.Time         // and its time (a rewrite may move it)
}

// SyncResult is what a sync found and did.
type SyncResult struct {
	Report       bool     `json:"report"`
	Host         string   `json:"host"`
	Repositories []string `json:"repositories"`
	// CatalogVersions counts the catalog's dataset versions the sync
	// compared, RepositoryVersions the versions (backups of a dataset)
	// of this host it found in the repositories.
	CatalogVersions    int          `json:"catalog_versions"`
	RepositoryVersions int          `json:"repository_versions"`
	Changes            []SyncChange `json:"changes"`
	// Notes are what the sync saw but left alone (snapshots it cannot
	// place in the catalog, records of repositories it does not know).
	Notes []string `json:"notes"`
}

// Count returns how many changes of the action the result holds.
func (r *SyncResult) Count(action string) int {
	n := 0
	for _, c := range r.Changes {
		if c.Action == action {
			n++
		}
	}
	return n
}

// versionKey names one version of one dataset: the dataset of one backup.
type versionKey struct{ source, dataset, backupID, host string }

func (k versionKey) String() string {
	return fmt.Sprintf("%s/%s of backup %s (host %s)", k.source, k.dataset, k.backupID, k.host)
}

// errNoRepository: there is no repository at a configured location (yet).
var errNoRepository = errors.New("no repository there")

// repositoryExists checks that a repository is at spec's location without
// creating one, as opening it through the pool would: a sync or a
// retention run against an empty new repository would take every record
// of it for gone.
func repositoryExists(ctx context.Context, spec *RepositorySpec) error {
	be, err := location.Open(ctx, spec.URL, spec.locationOptions())
	if err == nil {
		_, err = be.Stat(ctx, backend.Handle{Type: backend.ConfigFile})
		be.Close()
	}
	switch {
	case errors.Is(err, backend.ErrNotExist) || errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("repository %s (%s): %w", spec.Name, spec.URL, errNoRepository)
	case err != nil:
		return fmt.Errorf("repository %s (%s) cannot be read: %w", spec.Name, spec.URL, err)
	}
	return nil
}

// repoView is one repository as the sync listed it.
type repoView struct {
	spec    *RepositorySpec
	repo    *repository.Repository
	snaps   map[string]*repository.Snapshot
	damaged map[string]bool
	groups  map[versionKey][]*repository.Snapshot
}

// Sync reconciles the catalog with the repositories (repository to
// catalog):
//
//   - a version (a dataset of a backup) whose snapshots are in a
//     repository but which has no catalog record is added, rebuilt from
//     its snapshots (after a lost catalog);
//   - a record whose snapshots are all gone is removed (after forget);
//   - a record naming snapshots that are gone (part of a dataset stored as
//     one snapshot per atom) or that belong to another version is
//     rewritten from the snapshots the repository holds for it.
//
// It touches only this host's records (and, with opts.Forgotten, the
// records naming those snapshots), and takes each dataset's lock while it
// changes its record, so it never races an ingest of it. The catalog is
// read before the repositories are listed: every record read was written
// after its snapshots, so a snapshot missing from the listing is really
// gone. A second run changes nothing. A damaged snapshot file counts as
// present: it is for repair, not for forgetting.
func (m *Manager) Sync(ctx context.Context, rc *RuntimeContext, store SyncStore, opts SyncOptions) (*SyncResult, error) {
	cfg := rc.Config
	res := &SyncResult{Report: opts.Report, Host: cfg.Hostname, Changes: []SyncChange{}, Notes: []string{}}
	scope := cfg.Repositories
	if opts.Repositories != nil {
		scope = nil
		for _, name := range opts.Repositories {
			spec := cfg.Repository(name)
			if spec == nil {
				return nil, fmt.Errorf("sync: no repository %q in the configuration", name)
			}
			scope = append(scope, spec)
		}
	}
	all, err := store.AllDatasetVersions(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("sync: read the catalog: %w", err)
	}
	var errs []error
	views := map[string]*repoView{}
	for _, spec := range scope {
		jobs.ReportProgress(ctx, jobs.Progress{Current: "listing repository " + spec.Name})
		v, err := m.listRepository(ctx, spec, opts.Before)
		if err != nil {
			// Its records stay as they are; the others are synced.
			errs = append(errs, err)
			continue
		}
		views[spec.Name] = v
		res.Repositories = append(res.Repositories, spec.Name)
	}
	p := &syncPlan{cfg: cfg, rc: rc, opts: opts, views: views, res: res, ctx: ctx}
	if err := p.plan(all); err != nil {
		errs = append(errs, err)
	}
	if !opts.Report {
		errs = append(errs, m.applySync(ctx, rc, store, views, res))
	}
	return res, errors.Join(errs...)
}

// listRepository lists one repository's snapshots. A repository that
// does not exist is an error, never created: a sync against an empty new
// one would take every record of it for gone.
func (m *Manager) listRepository(ctx context.Context, spec *RepositorySpec, before time.Time) (*repoView, error) {
	if err := repositoryExists(ctx, spec); err != nil {
		return nil, fmt.Errorf("sync: %w; the records naming it stay as they are", err)
	}
	repo, err := m.repos.Get(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("sync: %w", err)
	}
	snaps, damaged, err := repo.ListSnapshots(ctx)
	if err != nil {
		return nil, fmt.Errorf("sync: list the snapshots of repository %s: %w", spec.Name, err)
	}
	v := &repoView{spec: spec, repo: repo, snaps: map[string]*repository.Snapshot{}, damaged: map[string]bool{}, groups: map[versionKey][]*repository.Snapshot{}}
	for _, d := range damaged {
		v.damaged[d.ID.String()] = true
	}
	for _, s := range snaps {
		v.snaps[s.ID.String()] = s
		source, dataset, ok := strings.Cut(s.Dataset, "/")
		if !ok || s.BackupID == "" || (!before.IsZero() && !s.Time.Before(before)) {
			continue // not written by an ingest; placed (or not) in plan
		}
		k := versionKey{source, dataset, s.BackupID, s.Host}
		v.groups[k] = append(v.groups[k], s)
	}
	return v, nil
}

// syncPlan decides the changes of one sync.
type syncPlan struct {
	ctx   context.Context
	cfg   *Config
	rc    *RuntimeContext
	opts  SyncOptions
	views map[string]*repoView
	res   *SyncResult
}

func (p *syncPlan) note(format string, args ...any) {
	p.res.Notes = append(p.res.Notes, fmt.Sprintf(format, args...))
}

func (p *syncPlan) plan(all []*metadata.Backup) error {
	host := p.cfg.Hostname
	inCatalog := map[versionKey]bool{}
	removals := map[string]int{} // by repository
	for _, b := range all {
		for _, d := range b.Datasets {
			k := versionKey{d.Source, d.Name, b.ID, b.Host}
			inCatalog[k] = true
			ids := SnapshotIDs(d)
			forgotten := slices.ContainsFunc(ids, func(id string) bool { return p.opts.Forgotten[id] })
			if b.Host != host && !forgotten {
				continue
			}
			v := p.views[d.Repository]
			if v == nil {
				if p.cfg.Repository(d.Repository) == nil && b.Host == host && p.opts.Repositories == nil {
					p.note("%s is recorded in repository %q, which this configuration does not define: not checked", k, d.Repository)
				}
				continue
			}
			p.res.CatalogVersions++
			c := p.checkRecord(k, b, d, v)
			if c == nil {
				continue
			}
			if c.Action == SyncRemove {
				removals[d.Repository]++
			}
			p.res.Changes = append(p.res.Changes, *c)
		}
	}
	var err error
	for name, n := range removals {
		if len(p.views[name].snaps) > 0 || len(p.views[name].damaged) > 0 || p.opts.AllowEmpty {
			continue
		}
		err = errors.Join(err, fmt.Errorf("sync: repository %s (%s) holds no snapshot at all, but the catalog lists %d version(s) in it: is its url right and its disk mounted? Not removing them (custos sync --allow-empty removes them)", name, p.views[name].spec.URL, n))
		p.res.Changes = slices.DeleteFunc(p.res.Changes, func(c SyncChange) bool { return c.Action == SyncRemove && c.Repository == name })
	}
	p.planAdds(inCatalog)
	sort.SliceStable(p.res.Changes, func(i, j int) bool {
		a, b := p.res.Changes[i], p.res.Changes[j]
		if a.Source+"/"+a.Dataset != b.Source+"/"+b.Dataset {
			return a.Source+"/"+a.Dataset < b.Source+"/"+b.Dataset
		}
		return a.Time.Before(b.Time)
	})
	return err
}

// checkRecord returns the change one catalog record needs, or nil.
func (p *syncPlan) checkRecord(k versionKey, b *metadata.Backup, d *metadata.Dataset, v *repoView) *SyncChange {
	ids := SnapshotIDs(d)
	var problems []string
	for _, id := range ids {
		if v.damaged[id] {
			continue
		}
		s := v.snaps[id]
		if s == nil {
			problems = append(problems, fmt.Sprintf("snapshot %s is gone", short(id)))
			continue
		}
		if err := crossCheck(s, d.Source+"/"+d.Name, b); err != nil {
			problems = append(problems, fmt.Sprintf("snapshot %s %v", short(id), err))
		}
	}
	if len(ids) == 0 {
		problems = append(problems, "it names no snapshot")
	}
	if len(problems) == 0 {
		return nil
	}
	reason := strings.Join(problems, "; ") + " (repository " + v.spec.Name + ")"
	// The version may still be held: in its repository under other
	// snapshots, or in another repository (a replica).
	for _, name := range p.preference(d.Source, v.spec.Name) {
		w := p.views[name]
		if w == nil || len(w.groups[k]) == 0 {
			continue
		}
		c, err := p.rebuild(k, w, w.groups[k], d)
		if err != nil {
			p.note("%s: %s, and it cannot be rebuilt from repository %s: %v", k, reason, name, err)
			return nil
		}
		if slices.Equal(c.Snapshots, ids) && name == d.Repository && c.Time.Equal(b.Timestamp) {
			return nil
		}
		c.Action, c.Reason, c.was, c.wasTime = SyncRewrite, reason, ids, b.Timestamp
		return c
	}
	return &SyncChange{Action: SyncRemove, Source: d.Source, Dataset: d.Name, BackupID: b.ID, Host: b.Host, Time: b.Timestamp,
		Repository: d.Repository, Snapshots: ids, Atoms: len(d.Atoms), Reason: reason, was: ids, wasTime: b.Timestamp}
}

// planAdds adds the versions of this host that the repositories hold and
// the catalog lacks.
func (p *syncPlan) planAdds(inCatalog map[versionKey]bool) {
	seen := map[versionKey]bool{}
	var keys []versionKey
	for _, v := range p.views {
		for k := range v.groups {
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	for _, k := range keys {
		if k.host != p.cfg.Hostname {
			continue
		}
		p.res.RepositoryVersions++
		if inCatalog[k] {
			continue
		}
		if err := validName(k.source); err != nil {
			p.note("snapshots of %s: source: %v; not recorded", k, err)
			continue
		}
		if err := validName(k.dataset); err != nil {
			p.note("snapshots of %s: dataset: %v; not recorded", k, err)
			continue
		}
		for _, name := range p.preference(k.source, "") {
			v := p.views[name]
			if v == nil || len(v.groups[k]) == 0 {
				continue
			}
			c, err := p.rebuild(k, v, v.groups[k], nil)
			if err != nil {
				p.note("snapshots of %s in repository %s: %v; not recorded", k, name, err)
				break
			}
			c.Action = SyncAdd
			c.Reason = "the repository holds it, the catalog does not"
			p.res.Changes = append(p.res.Changes, *c)
			break
		}
	}
}

// preference orders the repositories to rebuild a version of source from:
// first, then the source's own, then the rest in configuration order.
func (p *syncPlan) preference(source, first string) []string {
	var out []string
	add := func(n string) {
		if n != "" && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	add(first)
	if src := p.cfg.Source(source); src != nil {
		add(src.Repository)
	}
	for _, r := range p.cfg.Repositories {
		add(r.Name)
	}
	return out
}

// rebuild makes the catalog record of one version from its snapshots. What
// the snapshots do not record is taken from hint (the record it replaces)
// or the source's configuration: the atom names of a file dataset (its
// snapshot records the atoms' paths) and the paths of pipe atoms. The
// ingest's duration becomes the snapshots' own.
func (p *syncPlan) rebuild(k versionKey, v *repoView, snaps []*repository.Snapshot, hint *metadata.Dataset) (*SyncChange, error) {
	snaps = slices.Clone(snaps)
	slices.SortFunc(snaps, func(a, b *repository.Snapshot) int { return strings.Compare(a.ID.String(), b.ID.String()) })
	pipe := 0
	for _, s := range snaps {
		if _, ok := atomOf(s); ok {
			pipe++
		}
		if !s.Time.Equal(snaps[0].Time) {
			return nil, fmt.Errorf("its snapshots %s and %s differ in time", s.ID.Short(), snaps[0].ID.Short())
		}
	}
	if pipe != 0 && pipe != len(snaps) {
		return nil, fmt.Errorf("%d of its %d snapshots are tagged as pipe atoms", pipe, len(snaps))
	}
	known := p.configAtoms(k.source, k.dataset)
	var (
		atoms   []metadata.Atom
		used    []*repository.Snapshot
		inexact []string
		handler = "file"
	)
	if pipe > 0 {
		handler = "pipe"
		atoms, used, inexact = pipeAtoms(snaps, hint, known)
	} else {
		var err error
		atoms, used, inexact, err = fileAtoms(snaps, hint, known)
		if err != nil {
			return nil, err
		}
	}
	rec := &metadata.Dataset{
		ID: k.backupID + "/" + k.source + "/" + k.dataset, Source: k.source, Name: k.dataset,
		Handler: handler, Repository: v.spec.Name, Atoms: atoms,
	}
	if len(used) == 1 {
		rec.SnapshotID = used[0].ID.String() // as the ingest records it
	}
	for _, s := range used {
		rec.TotalFiles += s.Summary.Files
		rec.TotalBytes += s.Summary.Bytes
		rec.BytesAdded += s.Summary.BytesAdded
		rec.Duration += s.Summary.Duration
	}
	if hint != nil {
		rec.Duration = hint.Duration // the ingest's own measure
	} else {
		inexact = append(inexact, "duration from the snapshots")
	}
	b := &metadata.Backup{ID: k.backupID, Timestamp: used[0].Time, Host: k.host}
	return &SyncChange{
		Source: k.source, Dataset: k.dataset, BackupID: k.backupID, Host: k.host, Time: b.Timestamp,
		Repository: v.spec.Name, Snapshots: SnapshotIDs(rec), Atoms: len(atoms), Inexact: strings.Join(inexact, "; "),
		backup: b, rec: rec,
	}, nil
}

// atomOf returns the pipe atom a snapshot holds, from its "atom:" tag.
func atomOf(s *repository.Snapshot) (string, bool) {
	for _, t := range s.Tags {
		if name, ok := strings.CutPrefix(t, "atom:"); ok {
			return name, true
		}
	}
	return "", false
}

// pipeAtoms: one snapshot per atom, named by its tag. Of two snapshots of
// one atom (a retried ingest whose first record never got written) the
// one the old record names, else the first by id, is used.
func pipeAtoms(snaps []*repository.Snapshot, hint *metadata.Dataset, known []handlers.Atom) ([]metadata.Atom, []*repository.Snapshot, []string) {
	byName := map[string]*repository.Snapshot{}
	var inexact []string
	hinted := map[string]metadata.Atom{}
	if hint != nil {
		for _, a := range hint.Atoms {
			hinted[a.Name] = a
		}
	}
	for _, s := range snaps {
		name, _ := atomOf(s)
		if prev := byName[name]; prev != nil {
			if hinted[name].SnapshotID != s.ID.String() {
				inexact = append(inexact, fmt.Sprintf("atom %s has snapshots %s and %s; using %s", name, prev.ID.Short(), s.ID.Short(), prev.ID.Short()))
				continue
			}
		}
		byName[name] = s
	}
	// The atoms in the order the ingest had them: the old record's, the
	// configuration's, then by name.
	var order []string
	add := func(n string) {
		if byName[n] != nil && !slices.Contains(order, n) {
			order = append(order, n)
		}
	}
	if hint != nil {
		for _, a := range hint.Atoms {
			add(a.Name)
		}
	}
	paths := map[string]string{}
	for _, a := range known {
		add(a.Name)
		paths[a.Name] = a.Path
	}
	var rest []string
	for n := range byName {
		rest = append(rest, n)
	}
	sort.Strings(rest)
	for _, n := range rest {
		add(n)
	}
	atoms := make([]metadata.Atom, 0, len(order))
	used := make([]*repository.Snapshot, 0, len(order))
	for _, n := range order {
		path := paths[n]
		if h, ok := hinted[n]; ok {
			path = h.Path
		}
		atoms = append(atoms, metadata.Atom{Name: n, Path: path, SnapshotID: byName[n].ID.String()})
		used = append(used, byName[n])
	}
	return atoms, used, inexact
}

// fileAtoms: one snapshot per dataset, recording its atoms' paths in
// order. A snapshot records no atom names: a path is given the name the
// old record or the configuration has for it, and else its own.
func fileAtoms(snaps []*repository.Snapshot, hint *metadata.Dataset, known []handlers.Atom) ([]metadata.Atom, []*repository.Snapshot, []string, error) {
	s := snaps[0]
	var inexact []string
	if hint != nil {
		for _, c := range snaps {
			if c.ID.String() == hint.SnapshotID {
				s = c
			}
		}
	}
	if len(snaps) > 1 {
		inexact = append(inexact, fmt.Sprintf("%d snapshots hold this version (a retried ingest); using %s", len(snaps), s.ID.Short()))
	}
	if len(s.Paths) == 0 {
		return nil, nil, nil, fmt.Errorf("snapshot %s records no paths", s.ID.Short())
	}
	byPath := map[string]metadata.Atom{}
	for _, a := range known {
		byPath[cleanAtomPath(a.Name, a.Path)] = metadata.Atom{Name: a.Name, Path: a.Path}
	}
	if hint != nil {
		for _, a := range hint.Atoms {
			byPath[cleanAtomPath(a.Name, a.Path)] = metadata.Atom{Name: a.Name, Path: a.Path}
		}
	}
	var guessed []string
	seen := map[string]bool{}
	var atoms []metadata.Atom
	for _, path := range s.Paths {
		a, ok := byPath[path]
		if !ok {
			a = metadata.Atom{Name: path}
			guessed = append(guessed, path)
		}
		if seen[a.Name] {
			continue
		}
		seen[a.Name] = true
		a.SnapshotID = s.ID.String()
		atoms = append(atoms, a)
	}
	if len(guessed) > 0 {
		inexact = append(inexact, fmt.Sprintf("atoms named after their paths (%s): neither the catalog nor the configuration names them", strings.Join(shorten(guessed, 5), ", ")))
	}
	return atoms, []*repository.Snapshot{s}, inexact, nil
}

func cleanAtomPath(name, path string) string {
	if path == "" {
		path = name
	}
	return filepath.ToSlash(filepath.Clean(path))
}

func shorten(s []string, n int) []string {
	if len(s) <= n {
		return s
	}
	return append(slices.Clone(s[:n]), fmt.Sprintf("and %d more", len(s)-n))
}

// configAtoms returns the atoms the configuration writes out for a
// dataset. Datasets of a datasets_command are not listed: the sync runs
// no commands.
func (p *syncPlan) configAtoms(source, dataset string) []handlers.Atom {
	src := p.cfg.Source(source)
	if src == nil || src.DatasetsCommand != "" {
		return nil
	}
	dss, err := Datasets(p.ctx, p.rc.Shell(), src)
	if err != nil {
		return nil
	}
	for _, d := range dss {
		if d.Name == dataset {
			return d.Atoms
		}
	}
	return nil
}

func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// applySync makes the planned changes, each under its dataset's lock and
// only if the record is still what the plan saw: an ingest or another sync
// may have changed it since.
func (m *Manager) applySync(ctx context.Context, rc *RuntimeContext, store SyncStore, views map[string]*repoView, res *SyncResult) error {
	var errs []error
	for i := range res.Changes {
		c := &res.Changes[i]
		jobs.ReportProgress(ctx, jobs.Progress{Files: int64(i), TotalFiles: int64(len(res.Changes)), Current: c.Action + " " + c.Source + "/" + c.Dataset + " " + c.BackupID})
		skipped, err := m.applyChange(ctx, rc, store, views, c)
		switch {
		case err != nil:
			c.Skipped = err.Error()
			errs = append(errs, fmt.Errorf("sync: %s %s/%s of backup %s: %w", c.Action, c.Source, c.Dataset, c.BackupID, err))
		case skipped != "":
			c.Skipped = skipped
		default:
			c.Done = true
			m.log.Info("catalog synced with the repository", "action", c.Action, "source", c.Source, "dataset", c.Dataset, "backup", c.BackupID,
				"repository", c.Repository, "reason", c.Reason, "inexact", c.Inexact)
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) applyChange(ctx context.Context, rc *RuntimeContext, store SyncStore, views map[string]*repoView, c *SyncChange) (skipped string, err error) {
	if c.Host == rc.Config.Hostname {
		unlock, err := lockDataset(ctx, rc.Config.WorkDir, c.Source, c.Dataset)
		if err != nil {
			return "", err
		}
		defer unlock()
	}
	at := c.Time
	if c.Action != SyncAdd {
		at = c.wasTime
	}
	cur, err := store.GetDatasetVersion(ctx, c.Source, c.Dataset, at, c.BackupID)
	switch {
	case errors.Is(err, metadata.ErrNotFound):
		if c.Action != SyncAdd {
			return "the record is gone already", nil
		}
	case err != nil:
		return "", err
	case c.Action == SyncAdd:
		return "recorded meanwhile (by an ingest)", nil
	case !slices.Equal(SnapshotIDs(cur.Datasets[0]), c.was):
		return "the record changed meanwhile; the next sync looks at it again", nil
	}
	if c.Action == SyncRemove {
		_, err := store.RemoveDatasetVersion(ctx, c.Source, c.Dataset, at, c.BackupID)
		return "", err
	}
	// A failed pipe ingest takes its snapshots back: they must still be
	// there now that the dataset is locked.
	v := views[c.Repository]
	for _, id := range c.Snapshots {
		sid, err := repository.ParseID(id)
		if err != nil {
			return "", err
		}
		if _, err := v.repo.LoadSnapshot(ctx, sid); err != nil {
			return fmt.Sprintf("snapshot %s cannot be loaded any more: %v", short(id), err), nil
		}
	}
	if c.Action == SyncRewrite && !at.Equal(c.Time) {
		// The record sits under the wrong time: the rebuilt one has a
		// key of its own.
		if _, err := store.RemoveDatasetVersion(ctx, c.Source, c.Dataset, at, c.BackupID); err != nil {
			return "", err
		}
	}
	return "", store.AddDataset(ctx, c.backup, c.rec)
}

// catalogWarnings turns a report-mode sync into what the agent says at
// start: an empty or incomplete catalog next to a repository that holds
// backups, and records whose snapshots are gone.
func catalogWarnings(res *SyncResult) []string {
	var out []string
	adds, removes, rewrites := map[string]int{}, map[string]int{}, map[string]int{}
	for _, c := range res.Changes {
		switch c.Action {
		case SyncAdd:
			adds[c.Repository]++
		case SyncRemove:
			removes[c.Repository]++
		case SyncRewrite:
			rewrites[c.Repository]++
		}
	}
	for _, name := range res.Repositories {
		if n := adds[name]; n > 0 {
			what := "is missing"
			if res.CatalogVersions == 0 {
				what = "is empty for this host: was it lost? It is missing"
			}
			out = append(out, fmt.Sprintf("the catalog %s %d dataset version(s) that repository %s holds; custos sync (or a sync job) rebuilds them", what, n, name))
		}
		if n := removes[name]; n > 0 {
			out = append(out, fmt.Sprintf("the catalog lists %d dataset version(s) whose snapshots are gone from repository %s (forgotten?); their restore would fail; custos sync removes them", n, name))
		}
		if n := rewrites[name]; n > 0 {
			out = append(out, fmt.Sprintf("%d catalog record(s) name snapshots of repository %s that are gone or belong to another version; custos sync rewrites them from the repository", n, name))
		}
	}
	return out
}

// DefaultSyncSchedule is when the agent syncs the catalog with the
// repositories unless agent.yml says: once a day, at an offset of its
// own per host.
const DefaultSyncSchedule = "@random_every 24h"

// SyncSpec is agent.yml's sync: section.
type SyncSpec struct {
	// Schedule of the sync job; "" = only on demand.
	Schedule string
}

func decodeSync(d *decoder, n *yaml.Node, f string) SyncSpec {
	s := SyncSpec{Schedule: DefaultSyncSchedule}
	d.mapping(n, f, fields{
		"schedule": func(v *yaml.Node, f string) {
			if d.str(v, f, &s.Schedule) && s.Schedule != "" {
				if err := checkSchedule(s.Schedule); err != nil {
					d.errorf(v, f, "%v (\"\" runs the sync only on demand)", err)
				}
			}
		},
	})
	return s
}

// syncScheduleName is the scheduler entry of the sync.
const syncScheduleName = "sync"

// newSyncJob syncs the catalog with every repository on the sync queue,
// one at a time, then with every peer.
func (a *Agent) newSyncJob() jobs.Job {
	desc := "sync the catalog with the repositories"
	if len(a.cm.Current().Config.Peers) > 0 {
		desc += " and the peers"
	}
	return jobs.New(jobs.Info{
		Kind:        "sync",
		LockKey:     "sync",
		IfLocked:    jobs.LockSkip,
		Description: desc,
	}, func(ctx context.Context) error {
		res, err := a.sync(ctx)
		if res != nil {
			jobs.Logger(ctx).Info("sync done", "added", res.Count(SyncAdd), "removed", res.Count(SyncRemove), "rewritten", res.Count(SyncRewrite),
				"catalog_versions", res.CatalogVersions, "repository_versions", res.RepositoryVersions)
			for _, n := range res.Notes {
				jobs.Logger(ctx).Warn("sync left alone", "note", n)
			}
		}
		a.setCatalogWarnings(warningsAfterSync(res, err))
		a.backups.invalidate()
		err = errors.Join(err, a.sweepCatalog(ctx))
		// Then the peers (site to site), whatever the repositories said.
		return errors.Join(err, a.syncPeers(ctx))
	})
}

// sweepCatalog removes the atom sets that no catalog record names, the
// leftovers of writes that crashed (metadata KEYS.md, "Writes"); readers
// never count them, they only take space.
func (a *Agent) sweepCatalog(ctx context.Context) error {
	res, err := a.catalog.Store.SweepAtomSets(ctx, metadata.SweepOptions{MinAge: metadata.DefaultSweepAge})
	if err != nil {
		return fmt.Errorf("catalog sweep: %w", err)
	}
	jobs.Logger(ctx).Info("catalog sweep done", "atom_sets_removed", res.Gens, "keys_removed", res.Keys,
		"too_young", res.Young, "changed_meanwhile", res.Changed)
	return nil
}

// sync runs a full sync, in a worker process when the agent has them.
func (a *Agent) sync(ctx context.Context) (*SyncResult, error) {
	rc := a.cm.Current()
	if a.worker == nil {
		return a.mgr.Sync(ctx, rc, a.catalog.Store, SyncOptions{})
	}
	wr, err := a.runInWorker(ctx, rc, rc.Shell(), WorkerSpec{Kind: kindSync}, "sync")
	if wr == nil {
		return nil, err
	}
	return wr.Sync, err
}

// warningsAfterSync is what is left to say once a sync ran: the changes
// it could not make, and its failure.
func warningsAfterSync(res *SyncResult, err error) []string {
	var out []string
	if res != nil {
		left := &SyncResult{Repositories: res.Repositories, CatalogVersions: res.CatalogVersions}
		for _, c := range res.Changes {
			if !c.Done {
				left.Changes = append(left.Changes, c)
			}
		}
		out = catalogWarnings(left)
	}
	if err != nil {
		out = append(out, "the last sync failed: "+err.Error())
	}
	return out
}

// checkCatalog compares the catalog with the repositories at start,
// changing nothing, and says (log and status page) when the catalog is
// empty or incomplete next to repositories that hold backups, or lists
// versions whose snapshots are gone. Backups of this run are left out:
// they may be between their snapshot and their record.
func (a *Agent) checkCatalog(ctx context.Context) {
	a.loadPeerWarnings(ctx)
	res, err := a.mgr.Sync(ctx, a.cm.Current(), a.catalog.Store, SyncOptions{Report: true, Before: a.started})
	if ctx.Err() != nil {
		return
	}
	var warnings []string
	if res != nil {
		warnings = catalogWarnings(res)
	}
	if err != nil {
		// A repository that does not exist yet is new, not a problem:
		// its first backup creates it.
		var rest []error
		for _, e := range unjoin(err) {
			if !errors.Is(e, errNoRepository) {
				rest = append(rest, e)
			}
		}
		if len(rest) > 0 {
			warnings = append(warnings, "the catalog could not be compared with the repositories: "+errors.Join(rest...).Error())
		}
	}
	for _, w := range warnings {
		a.log.Warn("catalog check", "warning", w)
	}
	a.setCatalogWarnings(warnings)
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, unjoin(e)...)
		}
		return out
	}
	return []error{err}
}

func (a *Agent) setCatalogWarnings(w []string) {
	if w == nil {
		w = []string{}
	}
	a.warnMu.Lock()
	a.catalogWarnings = w
	a.warnMu.Unlock()
	a.changes.notify()
}

func (a *Agent) currentCatalogWarnings() []string {
	peers := a.cm.Current().Config.Peers
	a.warnMu.Lock()
	defer a.warnMu.Unlock()
	out := append([]string{}, a.catalogWarnings...)
	for _, p := range peers {
		out = append(out, a.peerWarnings[p.Name]...)
	}
	return out
}
