package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/custos-backup/custos/agent"
	"github.com/custos-backup/custos/repository"
	"golang.org/x/term"
)

// progressBar shows repository.Progress on stderr: a single line redrawn in
// place on a terminal, a plain line every plainEvery otherwise, or nothing
// when quiet.
type progressBar struct {
	mu       sync.Mutex
	w        io.Writer
	verb     string
	tty      bool
	width    int
	quiet    bool
	start    time.Time
	last     time.Time
	lastLen  int
	drawn    bool
	interval time.Duration
}

const plainEvery = 10 * time.Second

func newProgressBar(verb string, quiet bool) *progressBar {
	now := time.Now()
	p := &progressBar{w: os.Stderr, verb: verb, quiet: quiet, start: now, last: now, interval: plainEvery}
	fd := int(os.Stderr.Fd())
	if term.IsTerminal(fd) {
		p.tty = true
		p.interval = 200 * time.Millisecond
		p.width = 80
		if w, _, err := term.GetSize(fd); err == nil && w > 20 {
			p.width = w
		}
	}
	return p
}

// Update is the callback handed to the repository. It is safe to call from
// several goroutines.
func (p *progressBar) Update(pr repository.Progress) {
	if p == nil || p.quiet {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if now.Sub(p.last) < p.interval {
		return
	}
	p.last = now
	line := p.format(pr, now)
	if p.tty {
		if len(line) > p.width-1 {
			line = line[:p.width-1]
		}
		pad := ""
		if n := p.lastLen - len(line); n > 0 {
			pad = strings.Repeat(" ", n)
		}
		fmt.Fprintf(p.w, "\r%s%s", line, pad)
		p.lastLen = len(line)
		p.drawn = true
		return
	}
	fmt.Fprintln(p.w, line)
}

func (p *progressBar) format(pr repository.Progress, now time.Time) string {
	el := now.Sub(p.start).Seconds()
	rate := 0.0
	if el > 0 {
		rate = float64(pr.Bytes) / el / 1e6
	}
	var b strings.Builder
	if p.tty && pr.TotalBytes > 0 {
		frac := float64(pr.Bytes) / float64(pr.TotalBytes)
		frac = min(max(frac, 0), 1)
		const n = 20
		fill := int(frac * n)
		fmt.Fprintf(&b, "[%s%s] %3.0f%% ", strings.Repeat("=", fill), strings.Repeat(" ", n-fill), frac*100)
	} else if !p.tty {
		fmt.Fprintf(&b, "%s: [%s] ", p.verb, time.Duration(el*float64(time.Second)).Truncate(time.Second))
		if pr.TotalBytes > 0 {
			fmt.Fprintf(&b, "%3.0f%% ", min(max(float64(pr.Bytes)/float64(pr.TotalBytes), 0), 1)*100)
		}
	}
	if pr.TotalFiles > 0 {
		fmt.Fprintf(&b, "%d/%d files  ", pr.Files, pr.TotalFiles)
	} else {
		fmt.Fprintf(&b, "%d files  ", pr.Files)
	}
	if pr.TotalBytes > 0 {
		fmt.Fprintf(&b, "%s/%s  ", agent.HumanBytes(pr.Bytes), agent.HumanBytes(pr.TotalBytes))
	} else {
		fmt.Fprintf(&b, "%s  ", agent.HumanBytes(pr.Bytes))
	}
	fmt.Fprintf(&b, "%.1f MB/s", rate)
	if eta, ok := estimate(pr, el); ok {
		fmt.Fprintf(&b, "  ETA %s", eta)
	}
	if p.tty && pr.Current != "" {
		b.WriteString("  ")
		b.WriteString(pr.Current)
	}
	return b.String()
}

// Done clears the bar so that the summary prints on a clean line.
func (p *progressBar) Done() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty && p.drawn {
		fmt.Fprintf(p.w, "\r%s\r", strings.Repeat(" ", p.lastLen))
		p.drawn = false
	}
}

// estimate is the time left at the average rate so far, once there is a
// total and at least a second and some bytes to go by.
func estimate(pr repository.Progress, elapsed float64) (time.Duration, bool) {
	if pr.TotalBytes <= 0 || pr.Bytes <= 0 || elapsed < 1 || pr.Bytes >= pr.TotalBytes {
		return 0, false
	}
	left := float64(pr.TotalBytes-pr.Bytes) / (float64(pr.Bytes) / elapsed)
	return time.Duration(left * float64(time.Second)).Round(time.Second), true
}
