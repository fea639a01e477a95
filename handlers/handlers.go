// Package handlers knows how to read one kind of data into a repository and
// write it back: the Handler interface, and the "file" handler (paths on
// disk) and "pipe" handler (a command's output, fed back into another
// command on restore).
//
// A handler is built from a Spec (its type and params, already merged from
// the handler and source config) by New. It does not know about schedules,
// locks or the catalog: the agent does that around it. A handler writes one
// snapshot per stored unit and returns what it wrote; the agent records it.
package handlers

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/custos-backup/custos/repository"
)

// Handler backs up and restores one dataset.
type Handler interface {
	// Type is "file" or "pipe"; it is recorded in the catalog so that a
	// restore knows how the dataset was written.
	Type() string
	// Backup stores the dataset's atoms and returns the snapshots it wrote,
	// each with the atoms it holds: one per atom for "pipe", one for the
	// whole dataset for "file". Every atom of the request is in exactly one
	// of them. When it returns an error nothing it wrote may be recorded.
	Backup(ctx context.Context, req *BackupRequest) ([]Stored, error)
	// Restore writes the selected atoms back.
	Restore(ctx context.Context, req *RestoreRequest) error
}

// Atom is one independently restorable piece of a dataset.
type Atom struct {
	Name string
	// Path is the file handler's path under the source root; it defaults to
	// Name.
	Path string
}

// Stored is one snapshot a handler wrote, and the names of the atoms it
// holds, so that the catalog points each atom at its own snapshot without
// relying on any order.
type Stored struct {
	Snapshot *repository.Snapshot
	Atoms    []string
}

// Repo is what a handler needs from a repository; *repository.Repository
// has it.
type Repo interface {
	Backup(ctx context.Context, root string, paths []string, opts repository.BackupOptions) (*repository.Snapshot, error)
	BackupStream(ctx context.Context, name string, rd io.Reader, opts repository.BackupOptions) (*repository.Snapshot, error)
	Restore(ctx context.Context, snap *repository.Snapshot, target string, opts repository.RestoreOptions) (*repository.RestoreStats, error)
	RestoreRoot(ctx context.Context, snap *repository.Snapshot, root *os.Root, opts repository.RestoreOptions) (*repository.RestoreStats, error)
	RestoreFile(ctx context.Context, snap *repository.Snapshot, path string, w io.Writer) error
	// RemoveSnapshots takes back snapshots of a dataset that failed as a
	// whole.
	RemoveSnapshots(ctx context.Context, ids ...repository.ID) error
}

// BackupRequest is one dataset to back up.
type BackupRequest struct {
	Source, Dataset string
	Atoms           []Atom
	Host, BackupID  string
	Time            time.Time
	Repo            Repo
	Shell           Shell
	// Env is added to the environment of every command the handler runs,
	// on top of CommandEnv's.
	Env      []string
	Dir      string // working folder for commands; "" = the agent's
	Progress func(repository.Progress)
}

// RestoreRequest is a selection of atoms of one stored dataset to restore.
type RestoreRequest struct {
	Source, Dataset string
	BackupID        string
	Atoms           []Atom // the atoms to restore (a subset of the dataset's)
	// Snapshots are the dataset's snapshots as Backup returned them,
	// loaded from the repository: one for "file", one per atom for "pipe".
	Snapshots []*repository.Snapshot
	Repo      Repo
	Shell     Shell
	Target    string // folder to restore into
	// Root is Target opened as an os.Root by the caller, who created it
	// (and every folder on the way) through a root of its own. The file
	// handler writes only through it; without it, it opens Target itself.
	Root     *os.Root
	Stdout   io.Writer // pipe only: write the stream here instead of running restore_command
	Env      []string
	Dir      string
	Progress func(repository.Progress)
}

// Spec is a handler's configuration: its type and params, with a source's
// params already laid over the handler's.
type Spec struct {
	Name   string
	Type   string
	Params map[string]any
	// Dirs holds, per param, the folder of the file that set it; relative
	// paths in params are taken against it.
	Dirs map[string]string
}

// ParamError is a problem with one param, so that the config loader can
// point at the line that set it.
type ParamError struct {
	Param string
	Msg   string
}

func (e *ParamError) Error() string { return fmt.Sprintf("param %q: %s", e.Param, e.Msg) }

type constructor func(Spec) (Handler, error)

func constructors() map[string]constructor {
	return map[string]constructor{"file": newFileHandler, "pipe": newPipeHandler}
}

// Types lists the known handler types.
func Types() []string {
	var out []string
	for t := range constructors() {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// KnownType reports whether t is a handler type.
func KnownType(t string) bool {
	_, ok := constructors()[t]
	return ok
}

// ForRestore returns a handler of type t that can restore what a handler of
// that type stored when its configuration is not at hand (the source was
// removed, or the data comes from another host): "file" restores into the
// target; "pipe" can only write the stream to RestoreRequest.Stdout.
func ForRestore(t string) (Handler, error) {
	switch t {
	case "file":
		return &fileHandler{name: "file"}, nil
	case "pipe":
		return &pipeHandler{name: "pipe"}, nil
	}
	return nil, fmt.Errorf("unknown handler type %q (known: %s)", t, strings.Join(Types(), ", "))
}

// New builds a handler from its spec and checks its params.
func New(spec Spec) (Handler, error) {
	c, ok := constructors()[spec.Type]
	if !ok {
		return nil, fmt.Errorf("handler %q: unknown type %q (known: %s)", spec.Name, spec.Type, strings.Join(Types(), ", "))
	}
	return c(spec)
}

// params reads typed values out of a Spec and remembers which were read,
// so that an unknown (misspelt) param is an error.
type params struct {
	spec Spec
	used map[string]bool
	err  error
}

func newParams(spec Spec) *params { return &params{spec: spec, used: map[string]bool{}} }

func (p *params) fail(name, format string, args ...any) {
	if p.err == nil {
		p.err = &ParamError{Param: name, Msg: fmt.Sprintf(format, args...)}
	}
}

func (p *params) str(name string, required bool) string {
	p.used[name] = true
	v, ok := p.spec.Params[name]
	if !ok || v == nil {
		if required {
			p.fail(name, "missing: the %s handler %q needs it", p.spec.Type, p.spec.Name)
		}
		return ""
	}
	s, ok := v.(string)
	if !ok {
		p.fail(name, "expected a string, got %v", v)
	}
	return s
}

func (p *params) path(name string, required bool) string {
	s := p.str(name, required)
	if s == "" || filepath.IsAbs(s) {
		return s
	}
	return filepath.Join(p.spec.Dirs[name], s)
}

func (p *params) strList(name string) []string {
	p.used[name] = true
	v, ok := p.spec.Params[name]
	if !ok || v == nil {
		return nil
	}
	items, ok := v.([]any)
	if !ok {
		p.fail(name, "expected a list of strings")
		return nil
	}
	out := make([]string, 0, len(items))
	for _, it := range items {
		s, ok := it.(string)
		if !ok {
			p.fail(name, "expected a list of strings, got %v", it)
			return nil
		}
		out = append(out, s)
	}
	return out
}

// done reports the first problem, or an unknown param.
func (p *params) done() error {
	if p.err != nil {
		return p.err
	}
	var unknown []string
	for k := range p.spec.Params {
		if !p.used[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return &ParamError{Param: unknown[0], Msg: fmt.Sprintf("unknown param for the %s handler", p.spec.Type)}
	}
	return nil
}

// CommandEnv is the environment that names what a command works on. Every
// command run for a dataset gets it, hooks and handler commands alike, and
// it is built here only, so that they cannot disagree. atoms are all the
// atoms the run covers; atom is the one a per-atom command works on ("" for
// the others, which get CUSTOS_ATOM only when the run covers one atom).
func CommandEnv(source, dataset, backupID string, atoms []Atom, atom string) []string {
	names := make([]string, len(atoms))
	for i, a := range atoms {
		names[i] = a.Name
	}
	env := []string{
		"CUSTOS_SOURCE=" + source,
		"CUSTOS_DATASET=" + dataset,
		"CUSTOS_ATOMS=" + strings.Join(names, " "),
	}
	if backupID != "" {
		env = append(env, "CUSTOS_BACKUP_ID="+backupID)
	}
	if atom == "" && len(atoms) == 1 {
		atom = atoms[0].Name
	}
	if atom != "" {
		env = append(env, "CUSTOS_ATOM="+atom)
	}
	return env
}

func (a Atom) path() string {
	if a.Path != "" {
		return a.Path
	}
	return a.Name
}

// localPath checks that a name from the catalog or a tree is a plain
// relative path that stays inside the folder it is joined to. The catalog
// and the repository are input like any other: they may be damaged or
// hostile.
func localPath(what, p string) error {
	if !filepath.IsLocal(filepath.FromSlash(p)) || strings.Contains(p, "\\") {
		return fmt.Errorf("%s %q is not a relative path inside the target; refusing to restore it", what, p)
	}
	return nil
}
