package jobs

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseSchedule(t *testing.T) {
	tests := []struct {
		spec    string
		wantErr string // "" = valid
	}{
		{"* * * * *", ""},
		{"30 2 * * 1-5", ""},
		{"*/15 0-6 1,15 * *", ""},
		{"CRON_TZ=Europe/Rome 0 3 * * *", ""},
		{"@hourly", ""},
		{"@daily", ""},
		{"@weekly", ""},
		{"@every 1h", ""},
		{"@every 90s", ""},
		{"@random_every 24h", ""},
		{"@random_every 1h30m", ""},
		{"  @random_every \t 2h  ", ""},
		{"@random_every 1s", ""},
		{"", "empty schedule"},
		{"   ", "empty schedule"},
		{"* * * *", "expected exactly 5 fields"},
		{"0 * * * * *", "expected exactly 5 fields"},
		{"61 * * * *", "above maximum"},
		{"* 25 * * *", "above maximum"},
		{"CRON_TZ=Nowhere/Land 0 3 * * *", "provided bad location"},
		{"@sometimes", "unrecognized descriptor"},
		{"@every", "@every needs a duration"},
		{"@every soon", "failed to parse duration"},
		{"@every 0s", "shorter than 1s"},
		{"@every 500ms", "shorter than 1s"},
		{"@random_every", "needs a duration"},
		{"@random_every   ", "needs a duration"},
		{"@random_every 0", "shorter than 1s"},
		{"@random_every 500ms", "shorter than 1s"},
		{"@random_every -1h", "shorter than 1s"},
		{"@random_every 1d", "use hours"},
		{"@random_every hourly", "bad duration"},
		{"@random_every 1h 2h", "takes one duration"},
		{"@random_everyday", "unrecognized descriptor"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			s, err := ParseSchedule(tt.spec)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				now := time.Now()
				if next := s.Next(now); !next.After(now) {
					t.Fatalf("Next(%v) = %v", now, next)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q does not contain %q", err, tt.wantErr)
			}
			if tt.spec != "" && strings.TrimSpace(tt.spec) != "" && !strings.Contains(err.Error(), tt.spec) {
				t.Fatalf("error %q does not quote the spec", err)
			}
		})
	}
}

func TestRandomEveryNext(t *testing.T) {
	s := RandomEvery{Period: time.Hour, Offset: 15 * time.Minute}
	at := func(h, m, sec int) time.Time { return time.Date(2026, 3, 1, h, m, sec, 0, time.UTC) }
	tests := []struct{ now, want time.Time }{
		{at(10, 20, 0), at(11, 15, 0)},
		{at(10, 15, 0), at(11, 15, 0)}, // strictly after
		{at(10, 14, 59), at(10, 15, 0)},
		{at(10, 0, 0), at(10, 15, 0)},
		{time.Unix(-1, 0).UTC(), time.Unix(15*60, 0).UTC()}, // before the epoch
	}
	for _, tt := range tests {
		if got := s.Next(tt.now); !got.Equal(tt.want) {
			t.Errorf("Next(%v) = %v, want %v", tt.now, got, tt.want)
		}
	}
	// Consecutive activations are one period apart.
	day := RandomEvery{Period: 24 * time.Hour, Offset: 7*time.Hour + 3*time.Second}
	prev := day.Next(at(0, 0, 0))
	for range 50 {
		next := day.Next(prev)
		if next.Sub(prev) != 24*time.Hour {
			t.Fatalf("%v -> %v", prev, next)
		}
		if next.UTC().Hour() != 7 || next.UTC().Second() != 3 {
			t.Fatalf("activation %v is not at the offset", next)
		}
		prev = next
	}
}

func TestRandomOffset(t *testing.T) {
	seeds := []int64{0, 1, 2, 3, 42, -7, 1 << 40, 987654321}
	period := 24 * time.Hour
	seen := map[time.Duration]int64{}
	for _, seed := range seeds {
		o := RandomOffset(seed, "ingest/home", period)
		if o != RandomOffset(seed, "ingest/home", period) {
			t.Fatalf("seed %d: offset not stable", seed)
		}
		if o < 0 || o >= period || o%time.Second != 0 {
			t.Fatalf("seed %d: offset %v out of range or not whole seconds", seed, o)
		}
		if other, dup := seen[o]; dup {
			t.Fatalf("seeds %d and %d share offset %v", seed, other, o)
		}
		seen[o] = seed
		// Different entries on one host are spread too.
		if RandomOffset(seed, "ingest/mail", period) == o {
			t.Fatalf("seed %d: two names share an offset", seed)
		}
		// The parsed schedule uses the same offset.
		s, err := ParseHostSchedule("@random_every 24h", seed, "ingest/home")
		if err != nil {
			t.Fatal(err)
		}
		if re, ok := s.(RandomEvery); !ok || re.Offset != o || re.Period != period {
			t.Fatalf("parsed %#v, want offset %v", s, o)
		}
	}
	if RandomOffset(1, "x", 0) != 0 || RandomOffset(1, "x", time.Second) != 0 {
		t.Fatal("degenerate periods")
	}
}

func TestLoadOrCreateSeed(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "seed")
	s1, err := LoadOrCreateSeed(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != 32 {
		t.Fatalf("mode %v size %d", fi.Mode(), fi.Size())
	}
	s2, err := LoadOrCreateSeed(path)
	if err != nil || s2 != s1 {
		t.Fatalf("reload: %d %v, want %d", s2, err, s1)
	}
	if other, _ := LoadOrCreateSeed(filepath.Join(dir, "other")); other == s1 {
		t.Fatal("two new seed files gave the same seed")
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "sub"))
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}

	hand := filepath.Join(dir, "hand")
	os.WriteFile(hand, []byte("my-host-seed\n"), 0o600)
	h1, err1 := LoadOrCreateSeed(hand)
	h2, err2 := LoadOrCreateSeed(hand)
	if err1 != nil || err2 != nil || h1 != h2 {
		t.Fatalf("hand-written seed: %d %v %d %v", h1, err1, h2, err2)
	}

	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o600)
	if _, err := LoadOrCreateSeed(empty); err == nil || !strings.Contains(err.Error(), empty) {
		t.Fatalf("empty seed file: %v", err)
	}

	// Concurrent creators agree.
	race := filepath.Join(dir, "race")
	var wg sync.WaitGroup
	got := make([]int64, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := LoadOrCreateSeed(race)
			if err != nil {
				t.Error(err)
			}
			got[i] = s
		}()
	}
	wg.Wait()
	for _, s := range got {
		if s != got[0] {
			t.Fatalf("concurrent creators disagree: %v", got)
		}
	}
}

func newTestScheduler(t *testing.T) *Scheduler {
	t.Helper()
	s := NewScheduler(SchedulerOptions{Seed: 42, Logger: quietLogger(), Location: time.UTC})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			t.Error(err)
		}
	})
	return s
}

func TestSchedulerFires(t *testing.T) {
	s := newTestScheduler(t)
	fired := make(chan string, 10)
	type key struct{}
	err := s.Set([]Entry{{Name: "ingest/a", Schedule: "@every 1s", Run: func(ctx context.Context) {
		v, _ := ctx.Value(key{}).(string)
		select {
		case fired <- v:
		default:
		}
	}}})
	if err != nil {
		t.Fatal(err)
	}
	s.Start(context.WithValue(context.Background(), key{}, "from-start"))
	select {
	case v := <-fired:
		if v != "from-start" {
			t.Fatalf("Run ctx value = %q", v)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("entry never fired")
	}

	// Replacing the Run func of an unchanged entry takes effect.
	fired2 := make(chan struct{}, 10)
	if err := s.Set([]Entry{{Name: "ingest/a", Schedule: "@every 1s", Run: func(context.Context) {
		select {
		case fired2 <- struct{}{}:
		default:
		}
	}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-fired2:
	case <-time.After(30 * time.Second):
		t.Fatal("replaced entry never fired")
	}
}

func TestSchedulerSetAtomic(t *testing.T) {
	s := newTestScheduler(t)
	nop := func(context.Context) {}
	if err := s.Set([]Entry{
		{Name: "a", Schedule: "@daily", Run: nop},
		{Name: "b", Schedule: "@random_every 6h", Run: nop},
	}); err != nil {
		t.Fatal(err)
	}
	names := func() string {
		var out []string
		for _, e := range s.Entries() {
			out = append(out, e.Name+"="+e.Schedule)
		}
		return strings.Join(out, ",")
	}
	if got := names(); got != "a=@daily,b=@random_every 6h" {
		t.Fatalf("entries = %s", got)
	}
	before := time.Now()
	bNext := s.Entries()[1].Next
	after := time.Now()
	want := RandomEvery{Period: 6 * time.Hour, Offset: RandomOffset(42, "b", 6*time.Hour)}
	if !bNext.Equal(want.Next(before)) && !bNext.Equal(want.Next(after)) {
		t.Fatalf("b next = %v, want %v", bNext, want.Next(before))
	}

	bad := []struct {
		name    string
		entries []Entry
		wantErr string
	}{
		{"bad spec", []Entry{{Name: "c", Schedule: "@hourly", Run: nop}, {Name: "d", Schedule: "* * *", Run: nop}}, `schedule entry "d"`},
		{"duplicate", []Entry{{Name: "c", Schedule: "@hourly", Run: nop}, {Name: "c", Schedule: "@daily", Run: nop}}, "duplicate name"},
		{"no run", []Entry{{Name: "c", Schedule: "@hourly"}}, "no Run func"},
		{"no name", []Entry{{Schedule: "@hourly", Run: nop}}, "empty name"},
	}
	for _, tt := range bad {
		err := s.Set(tt.entries)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Fatalf("%s: err = %v, want %q", tt.name, err, tt.wantErr)
		}
		if got := names(); got != "a=@daily,b=@random_every 6h" {
			t.Fatalf("%s: failed Set changed entries: %s", tt.name, got)
		}
	}

	if err := s.Set([]Entry{
		{Name: "b", Schedule: "@hourly", Run: nop},
		{Name: "c", Schedule: "0 4 * * *", Run: nop},
	}); err != nil {
		t.Fatal(err)
	}
	if got := names(); got != "b=@hourly,c=0 4 * * *" {
		t.Fatalf("entries = %s", got)
	}
	if err := s.Set(nil); err != nil || len(s.Entries()) != 0 {
		t.Fatalf("clear: %v %v", err, s.Entries())
	}
}
