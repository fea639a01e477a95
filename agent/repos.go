package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sync"

	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/repository"
	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/location"
	"github.com/custos-backup/custos/repository/backend/s3"
)

// repoPool keeps repositories open across jobs and config generations:
// opening one loads its index, which is worth doing once. A reload that
// changes a repository's URL or password opens a new entry; jobs that
// started with the old one keep using it until the pool closes.
type repoPool struct {
	log *slog.Logger
	// wrap, when set, decorates each backend as it is opened: tests
	// inject the faults a real server cannot produce.
	wrap func(repo string, be backend.Backend) backend.Backend

	mu      sync.Mutex
	open    map[[32]byte]*poolEntry
	ensured map[[32]byte]bool

	// ensureMu serialises Ensure: two workers starting at once on a new
	// repository must not both initialise it (two master keys).
	ensureMu sync.Mutex
}

type poolEntry struct {
	once sync.Once
	repo *repository.Repository
	err  error
}

func newRepoPool(log *slog.Logger) *repoPool {
	return &repoPool{log: log, open: map[[32]byte]*poolEntry{}, ensured: map[[32]byte]bool{}}
}

func poolKey(spec *RepositorySpec) [32]byte {
	h := sha256.New()
	// A reload that changes the storage class opens a new backend.
	fmt.Fprintf(h, "%s\x00%s\x00%v\x00%+v\x00", spec.Name, spec.URL, spec.Unencrypted, spec.Archive)
	h.Write(spec.Password.Bytes())
	var k [32]byte
	copy(k[:], h.Sum(nil))
	return k
}

// Get opens the repository, creating it if there is none at its URL yet.
// A failed open is not cached, so the next job tries again.
func (p *repoPool) Get(ctx context.Context, spec *RepositorySpec) (*repository.Repository, error) {
	key := poolKey(spec)
	p.mu.Lock()
	e := p.open[key]
	if e == nil {
		e = &poolEntry{}
		p.open[key] = e
	}
	p.mu.Unlock()
	e.once.Do(func() { e.repo, e.err = p.openOrInit(ctx, spec) })
	if e.err != nil {
		p.mu.Lock()
		if p.open[key] == e {
			delete(p.open, key)
		}
		p.mu.Unlock()
		return nil, e.err
	}
	return e.repo, nil
}

// locationOptions are how spec's storage is opened.
func (spec *RepositorySpec) locationOptions() location.Options {
	return location.Options{CacheDir: spec.CacheDir}
}

// Ensure makes sure the repository exists, creating it if its URL holds
// none, without keeping it open: worker processes open it themselves, and
// must find it initialised, or two of them would each create one.
func (p *repoPool) Ensure(ctx context.Context, spec *RepositorySpec) error {
	key := poolKey(spec)
	p.ensureMu.Lock()
	defer p.ensureMu.Unlock()
	p.mu.Lock()
	done := p.ensured[key] || p.open[key] != nil
	p.mu.Unlock()
	if done {
		return nil
	}
	if be, err := location.Open(ctx, spec.URL, spec.locationOptions()); err == nil {
		_, serr := be.Stat(ctx, backend.Handle{Type: backend.ConfigFile})
		be.Close()
		if serr == nil {
			p.mu.Lock()
			p.ensured[key] = true
			p.mu.Unlock()
			return nil
		}
	}
	repo, err := p.openOrInit(ctx, spec)
	if err != nil {
		return err
	}
	if err := repo.Close(); err != nil {
		p.log.Warn("closing a repository", "repository", spec.Name, "error", err)
	}
	if err := repo.Backend().Close(); err != nil {
		p.log.Warn("closing a repository", "repository", spec.Name, "error", err)
	}
	p.mu.Lock()
	p.ensured[key] = true
	p.mu.Unlock()
	return nil
}

// Close closes every open repository.
func (p *repoPool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for k, e := range p.open {
		if e.repo != nil {
			if err := e.repo.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		delete(p.open, k)
	}
	return errors.Join(errs...)
}

// openOrInit opens a repository, and initialises it when its location holds
// none yet. A wrong password is never a reason to initialise.
func (p *repoPool) openOrInit(ctx context.Context, spec *RepositorySpec) (*repository.Repository, error) {
	log := p.log
	be, err := p.backend(ctx, spec, location.Open)
	if err == nil {
		repo, oerr := repository.Open(ctx, be, spec.Password.Bytes())
		if oerr == nil {
			repo.SetConnections(spec.Connections)
			return repo, nil
		}
		be.Close()
		if errors.Is(oerr, repository.ErrWrongPassword) {
			// Retrying cannot fix a wrong password.
			return nil, jobs.Permanent(fmt.Errorf("repository %s (%s): wrong password (from %s)", spec.Name, spec.URL, spec.passwordFrom))
		}
		if !errors.Is(oerr, repository.ErrNotInitialized) {
			return nil, fmt.Errorf("repository %s (%s): %w", spec.Name, spec.URL, oerr)
		}
	} else if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, backend.ErrNotExist) {
		return nil, fmt.Errorf("repository %s (%s): %w", spec.Name, spec.URL, err)
	}
	be, err = p.backend(ctx, spec, location.Create)
	if err != nil {
		return nil, fmt.Errorf("repository %s (%s): create: %w", spec.Name, spec.URL, err)
	}
	repo, err := repository.Init(ctx, be, repository.InitOptions{Password: spec.Password.Bytes(), Unencrypted: spec.Unencrypted})
	if err != nil {
		be.Close()
		return nil, fmt.Errorf("repository %s (%s): initialise: %w", spec.Name, spec.URL, err)
	}
	log.Info("created a new repository", "repository", spec.Name, "url", spec.URL, "encrypted", !spec.Unencrypted)
	repo.SetConnections(spec.Connections)
	return repo, nil
}

// backend opens (or creates) the backend of spec with its storage class
// settings, decorated by wrap.
func (p *repoPool) backend(ctx context.Context, spec *RepositorySpec, open func(context.Context, string, location.Options) (backend.Backend, error)) (backend.Backend, error) {
	be, err := open(ctx, spec.URL, spec.locationOptions())
	if err != nil {
		return nil, err
	}
	if spec.Archive != (s3.Archive{}) {
		a, ok := backend.As[interface{ SetArchive(s3.Archive) error }](be)
		if !ok {
			be.Close()
			return nil, jobs.Permanent(fmt.Errorf("storage_class is set, but %s is not an S3 repository", be.Location()))
		}
		if err := a.SetArchive(spec.Archive); err != nil {
			be.Close()
			return nil, jobs.Permanent(err)
		}
	}
	if p.wrap != nil {
		be = p.wrap(spec.Name, be)
	}
	return be, nil
}
