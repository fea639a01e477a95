package jobs

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// RandomEveryDescriptor starts a schedule that runs every <duration> at a
// per-host offset: "@random_every 24h".
const RandomEveryDescriptor = "@random_every"

// ParseSchedule checks spec and returns its schedule, without starting
// anything; the config loader uses it for validation. It accepts standard
// 5-field cron specs (minute hour day-of-month month day-of-week, with an
// optional CRON_TZ=/TZ= prefix), the descriptors @yearly, @annually,
// @monthly, @weekly, @daily, @midnight, @hourly and @every <duration>, and
// @random_every <duration>. For @random_every the returned schedule has
// offset 0; use ParseHostSchedule for the per-host one.
func ParseSchedule(spec string) (cron.Schedule, error) {
	return ParseHostSchedule(spec, 0, "")
}

// ParseHostSchedule is ParseSchedule with the per-host offset of
// @random_every derived from seed and name (see RandomOffset).
func ParseHostSchedule(spec string, seed int64, name string) (cron.Schedule, error) {
	s := strings.TrimSpace(spec)
	if s == "" {
		return nil, errors.New("empty schedule")
	}
	if rest, ok := strings.CutPrefix(s, RandomEveryDescriptor); ok && (rest == "" || rest[0] == ' ' || rest[0] == '\t') {
		period, err := parseRandomEvery(strings.TrimSpace(rest))
		if err != nil {
			return nil, fmt.Errorf("schedule %q: %w", spec, err)
		}
		return RandomEvery{Period: period, Offset: RandomOffset(seed, name, period)}, nil
	}
	if s == "@every" {
		return nil, fmt.Errorf("schedule %q: @every needs a duration, e.g. \"@every 1h\"", spec)
	}
	if rest, ok := strings.CutPrefix(s, "@every "); ok {
		// cron would quietly round anything under a second up to one
		// second, running a backup every second; refuse it instead.
		if d, err := time.ParseDuration(strings.TrimSpace(rest)); err == nil && d < time.Second {
			return nil, fmt.Errorf("schedule %q: @every %s is shorter than 1s", spec, d)
		}
	}
	p := cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)
	sched, err := p.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("schedule %q: %w", spec, err)
	}
	return sched, nil
}

func parseRandomEvery(arg string) (time.Duration, error) {
	if arg == "" {
		return 0, fmt.Errorf("%s needs a duration, e.g. \"%s 24h\"", RandomEveryDescriptor, RandomEveryDescriptor)
	}
	if strings.ContainsAny(arg, " \t") {
		return 0, fmt.Errorf("%s takes one duration, got %q", RandomEveryDescriptor, arg)
	}
	d, err := time.ParseDuration(arg)
	if err != nil {
		hint := ""
		if strings.HasSuffix(arg, "d") {
			hint = " (use hours, e.g. 24h)"
		}
		return 0, fmt.Errorf("%s: bad duration %q%s: %w", RandomEveryDescriptor, arg, hint, err)
	}
	if d < time.Second {
		return 0, fmt.Errorf("%s: duration %s is shorter than 1s", RandomEveryDescriptor, d)
	}
	return d, nil
}

// RandomOffset returns the stable offset in [0, period), in whole seconds,
// of the schedule called name on the host whose seed is seed. Hosts with
// different seeds spread their runs; the same host keeps its times across
// restarts.
func RandomOffset(seed int64, name string, period time.Duration) time.Duration {
	secs := uint64(period / time.Second)
	if secs == 0 {
		return 0
	}
	h := sha256.New()
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(seed))
	h.Write(b[:])
	h.Write([]byte{0})
	h.Write([]byte(name))
	sum := h.Sum(nil)
	return time.Duration(binary.BigEndian.Uint64(sum[:8])%secs) * time.Second
}

// RandomEvery fires every Period at Offset past each multiple of Period
// since the Unix epoch, so its times do not depend on when the agent
// started.
type RandomEvery struct {
	Period time.Duration
	Offset time.Duration
}

// Next returns the first activation strictly after t.
func (s RandomEvery) Next(t time.Time) time.Time {
	if s.Period <= 0 {
		return time.Time{}
	}
	base := time.Unix(0, 0).Add(s.Offset)
	since := t.Sub(base)
	k := since / s.Period
	if since < 0 && since%s.Period != 0 {
		k-- // floor division
	}
	next := base.Add((k + 1) * s.Period)
	return next.In(t.Location())
}

// LoadOrCreateSeed returns the host's schedule seed stored in path,
// creating the file with random bytes (mode 0600) if it does not exist.
// The file is created atomically: concurrent callers all end up with the
// same seed. Any non-empty content is accepted, so an operator may write
// one by hand.
func LoadOrCreateSeed(path string) (int64, error) {
	if seed, err := readSeed(path); !errors.Is(err, fs.ErrNotExist) {
		return seed, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, fmt.Errorf("seed file %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(dir, ".seed-*")
	if err != nil {
		return 0, fmt.Errorf("seed file %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	var buf [32]byte
	_, _ = rand.Read(buf[:])
	if _, err := tmp.Write(buf[:]); err != nil {
		tmp.Close()
		return 0, fmt.Errorf("seed file %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return 0, fmt.Errorf("seed file %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return 0, fmt.Errorf("seed file %s: %w", path, err)
	}
	// A hard link never replaces an existing file, so if another process
	// won the race we use its seed. Rename is the fallback for file
	// systems without links.
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		if rerr := os.Rename(tmp.Name(), path); rerr != nil {
			return 0, fmt.Errorf("seed file %s: %w", path, rerr)
		}
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return readSeed(path)
}

func readSeed(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("seed file %s: %w", path, err)
	}
	if len(b) == 0 {
		return 0, fmt.Errorf("seed file %s is empty; delete it to get a new seed", path)
	}
	sum := sha256.Sum256(b)
	return int64(binary.BigEndian.Uint64(sum[:8])), nil
}
