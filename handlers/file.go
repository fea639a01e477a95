package handlers

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/custos-backup/custos/repository"
)

// fileHandler backs up paths under a root folder. A dataset is one snapshot
// holding its atoms' paths; an atom's path is relative to the root.
type fileHandler struct {
	name     string
	root     string
	excludes []string
}

func newFileHandler(spec Spec) (Handler, error) {
	p := newParams(spec)
	h := &fileHandler{name: spec.Name, root: p.path("root", true), excludes: p.strList("excludes")}
	if err := p.done(); err != nil {
		return nil, err
	}
	return h, nil
}

func (h *fileHandler) Type() string { return "file" }

func (h *fileHandler) Backup(ctx context.Context, req *BackupRequest) ([]Stored, error) {
	paths := make([]string, 0, len(req.Atoms))
	names := make([]string, 0, len(req.Atoms))
	for _, a := range req.Atoms {
		p := filepath.ToSlash(filepath.Clean(a.path()))
		if err := localPath("atom path", p); err != nil {
			return nil, fmt.Errorf("atom %s/%s/%s: %w", req.Source, req.Dataset, a.Name, err)
		}
		paths = append(paths, p)
		names = append(names, a.Name)
	}
	snap, err := req.Repo.Backup(ctx, h.root, paths, repository.BackupOptions{
		Dataset:  req.Source + "/" + req.Dataset,
		Host:     req.Host,
		BackupID: req.BackupID,
		Time:     req.Time,
		Excludes: h.excludes,
		Progress: req.Progress,
	})
	if err != nil {
		return nil, fmt.Errorf("back up %s under %s: %w", req.Source+"/"+req.Dataset, h.root, err)
	}
	return []Stored{{Snapshot: snap, Atoms: names}}, nil
}

// Restore writes the selected atoms' paths into the target, laid out as they
// were under the root.
func (h *fileHandler) Restore(ctx context.Context, req *RestoreRequest) error {
	if len(req.Snapshots) != 1 {
		return fmt.Errorf("dataset %s/%s: the file handler stores one snapshot per dataset, the catalog lists %d", req.Source, req.Dataset, len(req.Snapshots))
	}
	if req.Target == "" {
		return fmt.Errorf("dataset %s/%s: file atoms need a target folder", req.Source, req.Dataset)
	}
	include := make([]string, 0, len(req.Atoms))
	for _, a := range req.Atoms {
		p := filepath.ToSlash(filepath.Clean(a.path()))
		if err := localPath("atom path", p); err != nil {
			return fmt.Errorf("atom %s/%s/%s: %w", req.Source, req.Dataset, a.Name, err)
		}
		include = append(include, p)
	}
	opts := repository.RestoreOptions{Include: include, Progress: req.Progress}
	var err error
	if req.Root != nil {
		_, err = req.Repo.RestoreRoot(ctx, req.Snapshots[0], req.Root, opts)
	} else {
		_, err = req.Repo.Restore(ctx, req.Snapshots[0], req.Target, opts)
	}
	if err != nil {
		return fmt.Errorf("restore %s/%s into %s: %w", req.Source, req.Dataset, req.Target, err)
	}
	return nil
}
