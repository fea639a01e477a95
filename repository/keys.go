package repository

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/format"
)

// KeyInfo describes one key file: a password that opens the repository.
type KeyInfo struct {
	ID       string    `json:"id"`
	Created  time.Time `json:"created"`
	Hostname string    `json:"hostname,omitempty"`
	KDF      string    `json:"kdf"`
	// Current is the key that opened this handle.
	Current bool `json:"current"`
}

// ErrUnencrypted is returned by key management on a repository without
// encryption, which has no keys.
var ErrUnencrypted = errors.New("the repository is not encrypted: it has no keys")

// Keys lists the key files, oldest first. A key file that does not decode
// is listed with its id only, so that it can be removed.
func (r *Repository) Keys(ctx context.Context) ([]KeyInfo, error) {
	if r.master == nil {
		return nil, ErrUnencrypted
	}
	var out []KeyInfo
	err := r.be.List(ctx, backend.KeyFile, func(fi backend.FileInfo) error {
		ki := KeyInfo{ID: fi.Name, Current: fi.Name == r.keyName}
		b, err := loadSmall(ctx, r.be, backend.Handle{Type: backend.KeyFile, Name: fi.Name}, format.MaxKeyFileSize)
		if err == nil {
			if k, err := format.DecodeKeyFile(b); err == nil {
				ki.Created, ki.Hostname, ki.KDF = k.Created, k.Hostname, k.KDF
			}
		}
		out = append(out, ki)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// AddKey wraps the master key with a new password (kdf "" means argon2id)
// and stores it as a new key file; the repository then opens with either.
func (r *Repository) AddKey(ctx context.Context, password []byte, kdf string) (string, error) {
	if r.master == nil {
		return "", ErrUnencrypted
	}
	if len(password) == 0 {
		return "", errors.New("add key: the new password is empty")
	}
	var params format.KdfParams
	switch kdf {
	case format.KdfScrypt:
		params = format.DefaultScrypt
	case "", format.KdfArgon2id:
		kdf, params = format.KdfArgon2id, format.DefaultArgon2id
	default:
		return "", fmt.Errorf("add key: unknown KDF %q (scrypt or argon2id)", kdf)
	}
	kb, err := format.NewKeyFile(kdf, params, password, r.master)
	if err != nil {
		return "", fmt.Errorf("add key: %w", err)
	}
	name := format.HashID(kb).String()
	if err := saveBytes(ctx, r.be, backend.Handle{Type: backend.KeyFile, Name: name}, kb); err != nil {
		return "", fmt.Errorf("add key %s: %w", name[:8], err)
	}
	return name, nil
}

// RemoveKey deletes a key file, given by its id or a unique prefix of it.
// It refuses the key that opened this handle (use a handle opened with
// another password) and the last key, either of which could lock everyone
// out.
func (r *Repository) RemoveKey(ctx context.Context, idPrefix string) (string, error) {
	keys, err := r.Keys(ctx)
	if err != nil {
		return "", err
	}
	var match []KeyInfo
	for _, k := range keys {
		if len(idPrefix) >= 4 && len(idPrefix) <= len(k.ID) && k.ID[:len(idPrefix)] == idPrefix {
			match = append(match, k)
		}
	}
	switch {
	case len(idPrefix) < 4:
		return "", fmt.Errorf("remove key %q: give at least 4 characters of its id", idPrefix)
	case len(match) == 0:
		return "", fmt.Errorf("remove key %q: no such key", idPrefix)
	case len(match) > 1:
		return "", fmt.Errorf("remove key %q: the prefix names %d keys; give more of the id", idPrefix, len(match))
	case match[0].Current:
		return "", fmt.Errorf("remove key %s: it is the key this command opened the repository with; open it with another password to remove it", match[0].ID[:8])
	case len(keys) == 1:
		return "", fmt.Errorf("remove key %s: it is the last key", match[0].ID[:8])
	}
	if err := r.be.Remove(ctx, backend.Handle{Type: backend.KeyFile, Name: match[0].ID}); err != nil {
		return "", fmt.Errorf("remove key %s: %w", match[0].ID[:8], err)
	}
	return match[0].ID, nil
}

// ChangePassword adds a key for the new password, then removes the one
// this handle was opened with, so that at no moment no key opens it.
func (r *Repository) ChangePassword(ctx context.Context, password []byte, kdf string) (string, error) {
	old := r.keyName
	name, err := r.AddKey(ctx, password, kdf)
	if err != nil {
		return "", err
	}
	if err := r.be.Remove(ctx, backend.Handle{Type: backend.KeyFile, Name: old}); err != nil {
		return name, fmt.Errorf("change password: the new key %s is stored, but removing the old key %s failed: %w", name[:8], old[:8], err)
	}
	r.keyName = name
	return name, nil
}
