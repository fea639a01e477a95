package repository

import (
	"context"
	"encoding/json"
	"io"

	"golang.org/x/sync/errgroup"
)

type failingReader struct{ err error }

func (f *failingReader) Read([]byte) (int, error) { return 0, f.err }

func io_MultiReader(r ...io.Reader) io.Reader { return io.MultiReader(r...) }

func json_Marshal(v any) ([]byte, error) { return json.Marshal(v) }

func errgroupWithContext(ctx context.Context) (*errgroup.Group, context.Context) {
	return errgroup.WithContext(ctx)
}
