package handlers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/custos-backup/custos/repository"
)

// Command is one command line to run through /bin/sh.
type Command struct {
	Line   string
	Env    []string  // added to the agent's environment
	Dir    string    // "" = the agent's working folder
	Stdin  io.Reader // nil = no input
	Stdout io.Writer // nil = the shell logs it line by line
}

// Shell runs commands. The agent adapts the shell package to it (nice,
// ionice, dry-run, process-group kill on cancel all live there).
type Shell interface {
	// Run runs c and waits for it. A non-zero exit, a signal, or ctx ending
	// is an error.
	Run(ctx context.Context, c Command) error
}

// atomTag marks the snapshot of one pipe atom: "atom:<name>".
const atomTag = "atom:"

// errStoppedReading unblocks a stream writer whose reader has gone.
var errStoppedReading = errors.New("reader stopped reading")

// pipeHandler stores what backup_command prints, one stream per atom, and
// on restore feeds each stream to restore_command on stdin.
type pipeHandler struct {
	name           string
	backupCommand  string
	restoreCommand string
}

func newPipeHandler(spec Spec) (Handler, error) {
	p := newParams(spec)
	h := &pipeHandler{
		name:           spec.Name,
		backupCommand:  p.str("backup_command", true),
		restoreCommand: p.str("restore_command", true),
	}
	if err := p.done(); err != nil {
		return nil, err
	}
	return h, nil
}

func (h *pipeHandler) Type() string { return "pipe" }

// Backup runs backup_command once per atom (with CUSTOS_ATOM set) and stores
// its stdout as a file named after the atom. A command that fails, at any
// point of its output, fails the whole dataset: the repository is told so
// through the reader, and records nothing for that stream.
//
// The dataset is one unit: when an atom fails, the snapshots of the atoms
// stored before it are removed again, so that a failed run (and each of its
// retries) leaves no partial dataset behind.
func (h *pipeHandler) Backup(ctx context.Context, req *BackupRequest) ([]Stored, error) {
	snaps := make([]*repository.Snapshot, 0, len(req.Atoms))
	stored := make([]Stored, 0, len(req.Atoms))
	for _, a := range req.Atoms {
		if err := localPath("atom name", a.Name); err != nil {
			return nil, errors.Join(fmt.Errorf("atom %s/%s/%s: %w", req.Source, req.Dataset, a.Name, err), takeBack(ctx, req, snaps))
		}
		snap, err := h.backupAtom(ctx, req, a)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("atom %s/%s/%s: %w", req.Source, req.Dataset, a.Name, err), takeBack(ctx, req, snaps))
		}
		snaps = append(snaps, snap)
		stored = append(stored, Stored{Snapshot: snap, Atoms: []string{a.Name}})
	}
	return stored, nil
}

// takeBack removes the snapshots of a dataset whose backup failed, also
// when the failure was ctx ending.
func takeBack(ctx context.Context, req *BackupRequest, snaps []*repository.Snapshot) error {
	if len(snaps) == 0 {
		return nil
	}
	ids := make([]repository.ID, len(snaps))
	for i, s := range snaps {
		ids[i] = s.ID
	}
	if err := req.Repo.RemoveSnapshots(context.WithoutCancel(ctx), ids...); err != nil {
		return fmt.Errorf("dataset %s/%s: the snapshots of the atoms stored before the failure stay in the repository (forget removes them): %w", req.Source, req.Dataset, err)
	}
	return nil
}

func (h *pipeHandler) backupAtom(ctx context.Context, req *BackupRequest, a Atom) (*repository.Snapshot, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	env := append(CommandEnv(req.Source, req.Dataset, req.BackupID, req.Atoms, a.Name), req.Env...)
	var cmdErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		cmdErr = req.Shell.Run(ctx, Command{Line: h.backupCommand, Env: env, Dir: req.Dir, Stdout: pw})
		if cmdErr != nil {
			pw.CloseWithError(&commandError{cmdErr})
		} else {
			pw.Close()
		}
	}()
	snap, err := req.Repo.BackupStream(ctx, a.Name, pr, repository.BackupOptions{
		Dataset:  req.Source + "/" + req.Dataset,
		Host:     req.Host,
		Tags:     []string{atomTag + a.Name},
		BackupID: req.BackupID,
		Time:     req.Time,
		NoParent: true,
		Progress: req.Progress,
	})
	// Stop the command if the repository gave up first, and never leave it
	// blocked on a pipe nobody reads.
	pr.CloseWithError(errStoppedReading)
	cancel()
	wg.Wait()
	var ce *commandError
	switch {
	case err != nil && errors.As(err, &ce):
		// The command failed first; the repository only passed it on.
		return nil, ce
	case err != nil:
		// The repository failed first (locked, disk full, ...) and the
		// command was stopped for it: its "killed" or "not started" is
		// a consequence, not the cause, and the cause alone decides
		// whether a retry can help.
		return nil, fmt.Errorf("store the stream in the repository: %w", err)
	case cmdErr != nil:
		return nil, &commandError{cmdErr}
	}
	return snap, nil
}

// commandError is backup_command's own failure, as passed through the
// pipe to the repository, so that it can be told from the repository's.
type commandError struct{ err error }

func (e *commandError) Error() string { return "backup_command failed: " + e.err.Error() }
func (e *commandError) Unwrap() error { return e.err }

// Restore streams each selected atom to restore_command's stdin, or to
// req.Stdout when set.
func (h *pipeHandler) Restore(ctx context.Context, req *RestoreRequest) error {
	byAtom, err := pairSnapshots(req)
	if err != nil {
		return err
	}
	for _, a := range req.Atoms {
		if err := localPath("atom name", a.Name); err != nil {
			return fmt.Errorf("atom %s/%s/%s: %w", req.Source, req.Dataset, a.Name, err)
		}
		snap := byAtom[a.Name]
		if snap == nil {
			return fmt.Errorf("atom %s/%s/%s: no snapshot recorded for it", req.Source, req.Dataset, a.Name)
		}
		if err := h.restoreAtom(ctx, req, a, snap); err != nil {
			return fmt.Errorf("atom %s/%s/%s: %w", req.Source, req.Dataset, a.Name, err)
		}
	}
	return nil
}

// pairSnapshots finds each atom's snapshot by the "atom:<name>" tag that
// Backup put on it.
func pairSnapshots(req *RestoreRequest) (map[string]*repository.Snapshot, error) {
	out := make(map[string]*repository.Snapshot, len(req.Snapshots))
	for _, s := range req.Snapshots {
		for _, t := range s.Tags {
			if name, ok := strings.CutPrefix(t, atomTag); ok {
				if out[name] != nil {
					return nil, fmt.Errorf("dataset %s/%s: two snapshots hold atom %q", req.Source, req.Dataset, name)
				}
				out[name] = s
			}
		}
	}
	return out, nil
}

func (h *pipeHandler) restoreAtom(ctx context.Context, req *RestoreRequest, a Atom, snap *repository.Snapshot) error {
	if req.Stdout != nil {
		return req.Repo.RestoreFile(ctx, snap, a.Name, req.Stdout)
	}
	if h.restoreCommand == "" {
		return fmt.Errorf("the source's restore_command is not in this configuration; restore the stream to standard output instead")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	var readErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		readErr = req.Repo.RestoreFile(ctx, snap, a.Name, pw)
		pw.CloseWithError(readErr)
	}()
	env := append(CommandEnv(req.Source, req.Dataset, req.BackupID, req.Atoms, a.Name), req.Env...)
	if req.Target != "" {
		env = append(env, "CUSTOS_RESTORE_TARGET="+req.Target)
	}
	cmdErr := req.Shell.Run(ctx, Command{Line: h.restoreCommand, Env: env, Dir: req.Dir, Stdin: pr})
	// A command that exits 0 without reading everything (tar leaves the
	// zero padding at the end of an archive) is its own business.
	pr.CloseWithError(errStoppedReading)
	wg.Wait()
	switch {
	case cmdErr != nil:
		return fmt.Errorf("restore_command failed: %w", cmdErr)
	case readErr != nil && !errors.Is(readErr, errStoppedReading):
		return fmt.Errorf("read stream from repository: %w", readErr)
	}
	return nil
}
