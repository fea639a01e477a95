package agent

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
	"gopkg.in/yaml.v3"

	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/repository/backend/location"
	"github.com/custos-backup/custos/repository/backend/s3"
)

// ReplicateSpec says where a source's (or one dataset's) snapshots are
// copied: `replicate: {to: [offsite], schedule: "@daily"}`. Without a
// schedule a replicate job follows each successful ingest of the dataset.
type ReplicateSpec struct {
	To       []string
	Schedule string
	File     string // where it was written, for config errors
	Line     int
	toLines  []int // line of each To entry
}

// FixitySpec is a repository's fixity policy: every pack verified at
// least once per Period, a run reading at most Budget bytes (0: no limit).
type FixitySpec struct {
	Schedule string
	Period   time.Duration
	Budget   int64
	// RunOnStart runs fixity once after the agent starts, when the
	// ingests and replications started with it are done.
	RunOnStart bool
}

// defaultFixityPeriod is how often every pack is proven when fixity gives
// no period: a month, the NDSA level 2-3 interval people quote.
const defaultFixityPeriod = 30 * 24 * time.Hour

func decodeReplicate(d *decoder, n *yaml.Node, prefix string) *ReplicateSpec {
	r := &ReplicateSpec{File: d.file, Line: n.Line}
	keys := d.mapping(n, prefix, fields{
		"to": func(v *yaml.Node, f string) {
			d.sequence(v, f, func(_ int, item *yaml.Node, f string) {
				var s string
				if d.str(item, f, &s) {
					r.To = append(r.To, s)
					r.toLines = append(r.toLines, item.Line)
				}
			})
		},
		"schedule": func(v *yaml.Node, f string) {
			if d.str(v, f, &r.Schedule) && r.Schedule != "" {
				if err := checkSchedule(r.Schedule); err != nil {
					d.errorf(v, f, "%v", err)
				}
			}
		},
	})
	if n.Kind != yaml.MappingNode {
		return nil
	}
	if keys["to"] == nil || len(r.To) == 0 {
		d.errorf(n, join(prefix, "to"), "missing: replicate needs the repositories to copy to (to: [offsite])")
	}
	return r
}

func decodeFixity(d *decoder, n *yaml.Node, prefix string) *FixitySpec {
	fx := &FixitySpec{Period: defaultFixityPeriod}
	d.mapping(n, prefix, fields{
		"schedule": func(v *yaml.Node, f string) {
			if d.str(v, f, &fx.Schedule) && fx.Schedule != "" {
				if err := checkSchedule(fx.Schedule); err != nil {
					d.errorf(v, f, "%v", err)
				}
			}
		},
		"period": func(v *yaml.Node, f string) {
			d.duration(v, f, &fx.Period)
			if fx.Period <= 0 {
				d.errorf(v, f, "period must be longer than 0")
			}
		},
		"run_on_start": func(v *yaml.Node, f string) { d.boolean(v, f, &fx.RunOnStart) },
		"budget": func(v *yaml.Node, f string) {
			var s string
			if !d.str(v, f, &s) {
				return
			}
			b, err := parseSize(s)
			if err != nil {
				d.errorf(v, f, "%v", err)
				return
			}
			fx.Budget = b
		},
	})
	if n.Kind != yaml.MappingNode {
		return nil
	}
	return fx
}

// decodeRestoreDays reads restore_days: a whole number of days, 1 or more.
func decodeRestoreDays(d *decoder, v *yaml.Node, f string, out *int32) {
	var n int
	if !d.integer(v, f, &n) {
		return
	}
	if n < 1 || n > 30000 {
		d.errorf(v, f, "restore_days must be a number of days from 1 to 30000, not %d", n)
		return
	}
	*out = int32(n)
}

// checkArchive rejects storage class settings that S3 would refuse, or
// that only an S3 repository can have, at the line that gives them.
func checkArchive(d *decoder, keys map[string]*yaml.Node, prefix string, r *RepositorySpec) {
	if r.Archive == (s3.Archive{}) {
		return
	}
	if field, err := r.Archive.Check(); err != nil {
		n := keys[field]
		if n == nil {
			n = keys["storage_class"]
		}
		if n == nil {
			n = keys["restore_tier"]
		}
		if n == nil {
			n = keys["restore_days"]
		}
		d.errorf(n, join(prefix, field), "%v", err)
		return
	}
	if loc, err := location.Parse(r.URL); err == nil && loc.Kind != location.S3 {
		for _, k := range []string{"storage_class", "restore_tier", "restore_days"} {
			if keys[k] != nil {
				d.errorf(keys[k], join(prefix, k), "only S3 repositories have storage classes; %s is a %s repository", r.Name, loc.Kind)
				return
			}
		}
	}
	checkRestoreDays(d, keys, prefix, r)
}

// checkRestoreDays rejects an archived repository whose restored packs
// expire before the next fixity run: fixity requests a pack's restore in
// one run and verifies it in a later one, so with a shorter restore_days
// it would request the same packs again every run and never verify them.
func checkRestoreDays(d *decoder, keys map[string]*yaml.Node, prefix string, r *RepositorySpec) {
	if !s3.IsArchived(r.Archive.StorageClass) || r.Fixity == nil || r.Fixity.Schedule == "" {
		return
	}
	sched, err := jobs.ParseSchedule(r.Fixity.Schedule)
	if err != nil {
		return // reported at the schedule
	}
	days := r.Archive.RestoreDays
	if days == 0 {
		days = s3.DefaultRestoreDays
	}
	gap := longestGap(sched, time.Now())
	if gap <= time.Duration(days)*24*time.Hour {
		return
	}
	need := int((gap + 24*time.Hour - 1) / (24 * time.Hour))
	n, field := keys["restore_days"], "restore_days"
	if n == nil {
		n, field = keys["fixity"], "fixity.schedule"
	}
	d.errorf(n, join(prefix, field), "restored packs stay readable for %d days, but fixity runs (%q) can be %d days apart: a pack restored for one run expires before the next can verify it; set restore_days to %d or more, or run fixity more often",
		days, r.Fixity.Schedule, need, need)
}

// longestGap is the longest time between two consecutive activations of
// sched in the year after from (a cron schedule's gaps repeat within a
// year, leap days aside). It looks at 20,000 activations at most: a
// schedule that fires that often within a year could still pause for
// months, but not as a fixity schedule anyone writes.
func longestGap(sched cron.Schedule, from time.Time) time.Duration {
	var longest time.Duration
	end := from.AddDate(1, 0, 1)
	prev := sched.Next(from)
	for i := 0; i < 20000 && !prev.IsZero() && prev.Before(end); i++ {
		next := sched.Next(prev)
		if next.IsZero() {
			break
		}
		longest = max(longest, next.Sub(prev))
		prev = next
	}
	return longest
}

// parseSize reads a byte count: 1048576, 512KiB, 100MiB, 2GiB, 1GB, 0.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if rest, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseFloat(t, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("expected a size like 100MiB, 2GiB or a number of bytes, got %q", s)
	}
	return int64(n * float64(mult)), nil
}

// checkReplication rejects replicate targets that do not exist, that are
// the source's own repository, or that refuse the source (never_from).
func (cfg *Config) checkReplication(errs *ConfigErrors, s *SourceSpec, r *ReplicateSpec, field string) {
	if r == nil {
		return
	}
	for i, to := range r.To {
		f := fmt.Sprintf("%s.to[%d]", field, i)
		e := &ConfigError{File: r.File, Line: r.toLines[i], Field: f}
		repo := cfg.Repository(to)
		switch {
		case repo == nil:
			e.Msg = fmt.Sprintf("unknown repository %q (known: %s)", to, strings.Join(cfg.repositoryNames(), ", "))
		case to == s.Repository:
			e.Msg = fmt.Sprintf("repository %q is where source %s is backed up; a replica must be another repository", to, s.Name)
		case slices.Contains(repo.NeverFrom, s.Name):
			e.Msg = fmt.Sprintf("repository %q refuses source %s (never_from in %s)", to, s.Name, cfg.File)
		default:
			continue
		}
		*errs = append(*errs, e)
	}
}

// ReplicateFor returns the replication of one dataset of s: the dataset's
// own, else the source's, else nil.
func (s *SourceSpec) ReplicateFor(dataset string) *ReplicateSpec {
	for _, ds := range s.Datasets {
		if ds.Name == dataset && ds.Replicate != nil {
			return ds.Replicate
		}
	}
	return s.Replicate
}

// replicateTargets lists every repository any dataset of s replicates to.
func (s *SourceSpec) replicateTargets() []string {
	var out []string
	add := func(r *ReplicateSpec) {
		if r == nil {
			return
		}
		for _, to := range r.To {
			if !slices.Contains(out, to) {
				out = append(out, to)
			}
		}
	}
	add(s.Replicate)
	for _, ds := range s.Datasets {
		add(ds.Replicate)
	}
	return out
}
