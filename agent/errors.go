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

func (es ConfigErrors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
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
