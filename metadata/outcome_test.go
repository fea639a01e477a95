package metadata

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestOutcomes writes outcomes of two hosts, two kinds and several
// datasets, more than are kept, and reads back the newest of each and the
// bounded history.
func TestOutcomes(t *testing.T) {
	ctx := ctxT(t)
	s := newSharedStore(t, Options{})
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < OutcomesKept+5; i++ {
		for _, host := range []string{"h1", "h2"} {
			result := "ok"
			if i%3 == 0 {
				result = "error"
			}
			o := &Outcome{Host: host, Kind: "ingest", Source: "mail", Dataset: "spool", JobID: fmt.Sprintf("job-%s-%02d", host, i),
				Start: t0.Add(time.Duration(i) * time.Hour), End: t0.Add(time.Duration(i)*time.Hour + time.Minute), Result: result, Attempts: 1, Bytes: int64(i)}
			if err := s.PutOutcome(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.PutOutcome(ctx, &Outcome{Host: "h1", Kind: "restore", Source: "mail", Dataset: "spool", JobID: "r1", End: t0, Result: "canceled"}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutOutcome(ctx, &Outcome{Host: "h1", Kind: "ingest", Source: "mail", Dataset: "spool2", JobID: "x", End: t0, Result: "ok"}); err != nil {
		t.Fatal(err)
	}

	last, err := s.LastOutcomes(ctx, "h1")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range last {
		got = append(got, o.Host+" "+o.Kind+" "+o.Dataset+" "+o.JobID)
	}
	want := fmt.Sprint([]string{"h1 ingest spool job-h1-24", "h1 ingest spool2 x", "h1 restore spool r1"})
	if fmt.Sprint(got) != want {
		t.Errorf("LastOutcomes(h1) = %v, want %v", got, want)
	}
	all, err := s.LastOutcomes(ctx, "")
	if err != nil || len(all) != 4 {
		t.Errorf("LastOutcomes(all) = %d outcomes, %v; want 4", len(all), err)
	}
	hist, err := s.Outcomes(ctx, "h2", "ingest", "mail", "spool", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != OutcomesKept || hist[0].JobID != fmt.Sprintf("job-h2-%02d", OutcomesKept+4) || hist[len(hist)-1].JobID != "job-h2-05" {
		t.Errorf("history of h2: %d outcomes from %s to %s; want %d, newest first, the oldest trimmed", len(hist), hist[0].JobID, hist[len(hist)-1].JobID, OutcomesKept)
	}
	if err := s.PutOutcome(ctx, &Outcome{Host: "h1", Kind: "ingest", JobID: "j"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("an outcome without an end time: %v, want ErrInvalid", err)
	}
	if err := s.PutOutcome(ctx, &Outcome{Host: "h1", Kind: "ingest", Source: "a/b", JobID: "j", End: t0}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a source with a slash: %v, want ErrInvalid", err)
	}
}
