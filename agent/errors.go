package agent

import (
	"fmt"
	"sort"
	"strings"
)

// ConfigError is one problem found in a configuration file. It names the
// file, the line and the field so that a person can go and fix it.
type ConfigError struct {
	File  string // path as the user gave it (relative stays relative)
	Line  int    // 1-based; 0 when the problem is about the whole file
	Field string // dotted path of the field, e.g. "datasets[1].atoms[0].name"
	Msg   string
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Field != "" {
		fmt.Fprintf(&b, "field %q: ", e.Field)
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ConfigErrors is every problem found while loading a configuration. Loading
// goes on after the first problem so that a person sees all of them at once.
type ConfigErrors []*ConfigError

// maxErrorLines bounds the lines Error prints: one mistake repeated in
// every item of a long list (20,000 atoms) would otherwise bury the rest.
// The errors themselves stay in the slice.
const maxErrorLines = 50

func (es ConfigErrors) Error() string {
	n := min(len(es), maxErrorLines)
	lines := make([]string, n, n+1)
	for i, e := range es[:n] {
		lines[i] = e.Error()
	}
	if more := len(es) - n; more > 0 {
		lines = append(lines, fmt.Sprintf("... and %d more problem(s)", more))
	}
	return strings.Join(lines, "\n")
}

// sorted orders errors by file and line, which is how a person reads them.
func (es ConfigErrors) sorted() ConfigErrors {
	out := append(ConfigErrors(nil), es...)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].File != out[j].File {
			return out[i].File < out[j].File
		}
		return out[i].Line < out[j].Line
	})
	return out
}
