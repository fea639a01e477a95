package main

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSIGHUPWiring sends a real SIGHUP to the test process: with the
// handler installed it becomes a reload request instead of killing us.
func TestSIGHUPWiring(t *testing.T) {
	reload, stop := reloadOnSIGHUP(slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer stop()
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	<-reload // blocks until delivered; the test deadline bounds it
}

func TestConfigCheckCommand(t *testing.T) {
	cases := []struct {
		name, config string
		wantErr      bool
		wantOut      string
	}{
		{"the shipped example", "../../config.d/agent.yml", false, "config OK"},
		{"a missing file", "/nonexistent/agent.yml", true, "/nonexistent/agent.yml: cannot read config"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := runConfigCheck(&out, &errOut, tc.config)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error: %v", err, tc.wantErr)
			}
			if !strings.Contains(out.String()+errOut.String(), tc.wantOut) {
				t.Errorf("output %q lacks %q", out.String()+errOut.String(), tc.wantOut)
			}
		})
	}
}

func TestParseOlderThan(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		in      string
		want    time.Time
		wantErr bool
	}{
		{"", time.Time{}, false},
		{"24h", now.Add(-24 * time.Hour), false},
		{"90m", now.Add(-90 * time.Minute), false},
		{"2025-05-01T10:00:00Z", time.Date(2025, 5, 1, 10, 0, 0, 0, time.UTC), false},
		{"-1h", time.Time{}, true},
		{"yesterday", time.Time{}, true},
	}
	for _, tc := range cases {
		got, err := parseOlderThan(tc.in, now)
		if (err != nil) != tc.wantErr || !got.Equal(tc.want) {
			t.Errorf("%q: got %v, %v; want %v (error %v)", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}
