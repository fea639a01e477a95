package repository

import (
	"context"
	"fmt"
	"io"

	"github.com/custos-backup/custos/repository/backend"
)

// loadSmall reads a whole object of at most limit bytes.
func loadSmall(ctx context.Context, be packLoader, h backend.Handle, limit int64) ([]byte, error) {
	rd, err := be.Load(ctx, h, 0, 0)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rd.Close() }()
	b, err := io.ReadAll(io.LimitReader(rd, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", h, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("read %s: larger than %d bytes", h, limit)
	}
	return b, nil
}
