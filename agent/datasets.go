package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/custos-backup/custos/handlers"
	"github.com/custos-backup/custos/shell"
)

// Dataset is one dataset of a source as the agent is about to back it up:
// from the source file, or from its datasets_command.
type Dataset struct {
	Name  string
	Atoms []handlers.Atom
}

// Datasets returns the datasets of a source: written out in its file, or
// printed by its datasets_command.
//
// datasets_command prints one dataset per line:
//
//	dataset [atom[=path] ...]
//
// separated by spaces or tabs. A line with only a dataset name has one atom
// of the same name. Blank lines and lines starting with '#' are ignored.
// For the file handler an atom's path is its name unless "=path" is given.
func Datasets(ctx context.Context, sh *shell.Shell, src *SourceSpec) ([]Dataset, error) {
	if src.DatasetsCommand == "" {
		out := make([]Dataset, 0, len(src.Datasets))
		for _, ds := range src.Datasets {
			d := Dataset{Name: ds.Name}
			for _, a := range ds.Atoms {
				d.Atoms = append(d.Atoms, handlers.Atom{Name: a.Name, Path: a.Path})
			}
			if len(d.Atoms) == 0 {
				d.Atoms = []handlers.Atom{{Name: ds.Name}}
			}
			out = append(out, d)
		}
		return out, nil
	}
	if sh.DryRun() {
		// The command would not run, so there is nothing to list.
		return nil, nil
	}
	outb, err := listDatasets(ctx, sh.WithEnv("CUSTOS_SOURCE="+src.Name), src)
	if err != nil {
		return nil, fmt.Errorf("source %s: datasets_command: %w", src.Name, err)
	}
	ds, err := ParseDatasets(outb)
	if err != nil {
		return nil, fmt.Errorf("source %s: datasets_command output: %w", src.Name, err)
	}
	return ds, nil
}

// Bounds of datasets_command: a listing is a few lines per dataset, so
// megabytes mean a runaway command (`yes`), and one that never ends must
// not hold a POST /api/run or a schedule tick for good.
const (
	maxDatasetsOutput      = 16 << 20
	defaultDatasetsTimeout = 10 * time.Minute
)

// listDatasets runs datasets_command within the source's timeout (or
// defaultDatasetsTimeout) and reads at most maxDatasetsOutput bytes of its
// output; past either bound the command's process group is killed.
func listDatasets(ctx context.Context, sh *shell.Shell, src *SourceSpec) ([]byte, error) {
	timeout := src.Timeout
	if timeout <= 0 {
		timeout = defaultDatasetsTimeout
	}
	ctx, cancel := context.WithTimeoutCause(ctx, timeout, fmt.Errorf("still running after %s (the source's timeout)", timeout))
	defer cancel()
	p, err := sh.Start(ctx, src.DatasetsCommand, shell.StartOptions{PipeStdout: true})
	if err != nil {
		return nil, err
	}
	out, readErr := io.ReadAll(io.LimitReader(p.Stdout, maxDatasetsOutput+1))
	if len(out) > maxDatasetsOutput {
		cancel()
		_ = p.Stdout.Close()
		_ = p.Wait()
		return nil, fmt.Errorf("printed more than %d MiB; it was stopped", maxDatasetsOutput>>20)
	}
	_ = p.Stdout.Close()
	waitErr := p.Wait()
	if cause := context.Cause(ctx); cause != nil && ctx.Err() == context.DeadlineExceeded {
		return nil, cause
	}
	if waitErr != nil {
		return nil, waitErr
	}
	return out, readErr
}

// ParseDatasets parses datasets_command output (see Datasets).
func ParseDatasets(out []byte) ([]Dataset, error) {
	var res []Dataset
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		f := strings.Fields(text)
		if err := validName(f[0]); err != nil {
			return nil, fmt.Errorf("line %d: dataset: %w", line, err)
		}
		if seen[f[0]] {
			return nil, fmt.Errorf("line %d: dataset %q is listed twice", line, f[0])
		}
		seen[f[0]] = true
		d := Dataset{Name: f[0]}
		atomSeen := map[string]bool{}
		for _, a := range f[1:] {
			name, path, _ := strings.Cut(a, "=")
			if err := validName(name); err != nil {
				return nil, fmt.Errorf("line %d: atom: %w", line, err)
			}
			if path != "" {
				if err := checkAtomPath(path); err != nil {
					return nil, fmt.Errorf("line %d: %w", line, err)
				}
			}
			if atomSeen[name] {
				return nil, fmt.Errorf("line %d: atom %q is listed twice in dataset %q", line, name, d.Name)
			}
			atomSeen[name] = true
			d.Atoms = append(d.Atoms, handlers.Atom{Name: name, Path: path})
		}
		if len(d.Atoms) == 0 {
			d.Atoms = []handlers.Atom{{Name: d.Name}}
		}
		res = append(res, d)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return res, nil
}
