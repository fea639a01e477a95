package main

import (
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/repository"
)

func TestProgressLine(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		tty  bool
		pr   repository.Progress
		at   time.Duration
		want []string
		not  []string
	}{
		{"known total on a terminal", true, repository.Progress{Bytes: 25 << 20, TotalBytes: 100 << 20, Files: 5, TotalFiles: 20}, 10 * time.Second,
			[]string{" 25% ", "5/20 files", "25.0 MiB/100.0 MiB", "ETA 30s"}, nil},
		{"known total in a log", false, repository.Progress{Bytes: 50 << 20, TotalBytes: 100 << 20}, 20 * time.Second,
			[]string{"backup: [20s]  50% ", "ETA 20s"}, nil},
		{"unknown total", true, repository.Progress{Bytes: 50 << 20, Files: 3}, 5 * time.Second,
			[]string{"3 files", "50.0 MiB"}, []string{"ETA", "%"}},
		{"too early for an estimate", true, repository.Progress{Bytes: 1, TotalBytes: 100}, 100 * time.Millisecond,
			nil, []string{"ETA"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := &progressBar{verb: "backup", tty: tc.tty, start: start}
			line := p.format(tc.pr, start.Add(tc.at))
			for _, w := range tc.want {
				if !strings.Contains(line, w) {
					t.Errorf("%q lacks %q", line, w)
				}
			}
			for _, w := range tc.not {
				if strings.Contains(line, w) {
					t.Errorf("%q has %q", line, w)
				}
			}
		})
	}
}
