package backendtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path"
	"strings"
	"sync"

	"github.com/custos-backup/custos/repository/backend"
)

// Mem is a backend.Backend that keeps its objects in memory. It passes the
// conformance suite, so tests that need many repositories, or many
// operations on one, can run on it without touching a disk; it is never
// used for data that matters.
type Mem struct {
	mu      sync.RWMutex
	objects map[string][]byte // by Handle.Path()
}

// NewMem returns an empty in-memory backend.
func NewMem() *Mem { return &Mem{objects: map[string][]byte{}} }

// Location implements backend.Backend.
func (m *Mem) Location() string { return "mem:" }

func ctxErr(ctx context.Context, op string, h backend.Handle) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s %s: %w", op, h, context.Cause(ctx))
	}
	return nil
}

// Save implements backend.Backend: the object becomes visible whole, and
// only once all size bytes were read and the context is still live.
func (m *Mem) Save(ctx context.Context, h backend.Handle, rd io.ReadSeeker, size int64) error {
	if err := h.Valid(); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	if err := ctxErr(ctx, "save", h); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("save %s: negative size %d", h, size)
	}
	data := make([]byte, size)
	if _, err := io.ReadFull(rd, data); err != nil {
		return fmt.Errorf("save %s: read %d bytes: %w", h, size, err)
	}
	var one [1]byte
	if n, _ := rd.Read(one[:]); n > 0 {
		return fmt.Errorf("save %s: the reader holds more than %d bytes", h, size)
	}
	if err := ctxErr(ctx, "save", h); err != nil {
		return err
	}
	m.mu.Lock()
	m.objects[h.Path()] = data
	m.mu.Unlock()
	return nil
}

func (m *Mem) get(ctx context.Context, op string, h backend.Handle) ([]byte, error) {
	if err := h.Valid(); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if err := ctxErr(ctx, op, h); err != nil {
		return nil, err
	}
	m.mu.RLock()
	data, ok := m.objects[h.Path()]
	m.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%s %s: %w", op, h, backend.ErrNotExist)
	}
	return data, nil
}

// Load implements backend.Backend.
func (m *Mem) Load(ctx context.Context, h backend.Handle, length int, offset int64) (io.ReadCloser, error) {
	data, err := m.get(ctx, "load", h)
	if err != nil {
		return nil, err
	}
	size := int64(len(data))
	end := size
	if length > 0 {
		end = offset + int64(length)
	}
	if offset < 0 || length < 0 || offset > size || end > size {
		return nil, fmt.Errorf("load %s: range %d+%d runs past the end of the object (%d bytes)", h, offset, length, size)
	}
	// Objects are never changed in place (Save replaces the slice), so
	// the reader may share it.
	return io.NopCloser(bytes.NewReader(data[offset:end])), nil
}

// Stat implements backend.Backend.
func (m *Mem) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	data, err := m.get(ctx, "stat", h)
	if err != nil {
		return backend.FileInfo{}, err
	}
	name := h.Name
	if h.Type == backend.ConfigFile {
		name = "config"
	}
	return backend.FileInfo{Name: name, Size: int64(len(data))}, nil
}

// List implements backend.Backend. It lists a copy taken at the start, so
// fn may call the backend.
func (m *Mem) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %s: %w", t, context.Cause(ctx))
	}
	var infos []backend.FileInfo
	m.mu.RLock()
	for p, data := range m.objects {
		h, ok := handleOf(p)
		if ok && h.Type == t {
			infos = append(infos, backend.FileInfo{Name: h.Name, Size: int64(len(data))})
		}
	}
	m.mu.RUnlock()
	for _, fi := range infos {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("list %s: %w", t, context.Cause(ctx))
		}
		if err := fn(fi); err != nil {
			return err
		}
	}
	return nil
}

// handleOf parses a Handle.Path back into its handle.
func handleOf(p string) (backend.Handle, bool) {
	if p == "config" {
		return backend.Handle{Type: backend.ConfigFile, Name: "config"}, true
	}
	dir, _, ok := strings.Cut(p, "/")
	return backend.Handle{Type: backend.FileType(dir), Name: path.Base(p)}, ok
}

// Remove implements backend.Backend.
func (m *Mem) Remove(ctx context.Context, h backend.Handle) error {
	if _, err := m.get(ctx, "remove", h); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.objects[h.Path()]; !ok {
		return fmt.Errorf("remove %s: %w", h, backend.ErrNotExist)
	}
	delete(m.objects, h.Path())
	return nil
}

// Close implements backend.Backend.
func (m *Mem) Close() error { return nil }
