package repository

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/format"
)

// listKeyNames lists keys/.
func listKeyNames(ctx context.Context, be backend.Backend) ([]string, error) {
	var names []string
	err := be.List(ctx, backend.KeyFile, func(fi backend.FileInfo) error {
		names = append(names, fi.Name)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	return names, nil
}

// findMasterKey tries every key file (names, from keys/) with password and
// returns the master key of the first that opens, checked against the config.
func findMasterKey(ctx context.Context, be backend.Backend, names []string, cf *format.ConfigFile, password []byte) ([]byte, *format.Config, string, error) {
	if len(names) == 0 {
		return nil, nil, "", errors.New("encrypted repository has no key files")
	}
	var errs []error
	for _, name := range names {
		h := backend.Handle{Type: backend.KeyFile, Name: name}
		b, err := loadSmall(ctx, be, h, format.MaxKeyFileSize)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if id, err := ParseID(name); err != nil || format.HashID(b) != id {
			errs = append(errs, fmt.Errorf("key %s: name does not match its SHA-256", h))
			continue
		}
		k, err := format.DecodeKeyFile(b)
		if err != nil {
			errs = append(errs, fmt.Errorf("key %s: %w", h, err))
			continue
		}
		master, err := k.UnwrapMasterKey(password)
		if errors.Is(err, ErrWrongPassword) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("key %s: %w", h, err))
			continue
		}
		s, err := format.NewSealer(master)
		if err != nil {
			return nil, nil, "", err
		}
		cfg, err := format.DecodeRepoConfig(cf, s)
		if err != nil {
			errs = append(errs, fmt.Errorf("key %s opens but does not open the config: %w", h, err))
			continue
		}
		return master, cfg, name, nil
	}
	if len(errs) > 0 {
		return nil, nil, "", fmt.Errorf("%w (also: %w)", ErrWrongPassword, errors.Join(errs...))
	}
	return nil, nil, "", ErrWrongPassword
}

func saveBytes(ctx context.Context, be backend.Backend, h backend.Handle, b []byte) error {
	if err := be.Save(ctx, h, bytes.NewReader(b), int64(len(b))); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	return nil
}
