package metadata

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkFind measures FindAtoms on a catalog of 100 datasets of 1,000
// atoms each (bench/catalog-scale.sh measures the same through the agent
// and the CLI).
func BenchmarkFind(b *testing.B) {
	ctx := context.Background()
	cli, err := dial(ctx, Config{DialTimeout: 10 * time.Second}, []string{shared.endpoint})
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	var s *EtcdStore
	s, err = NewStore(cli, Options{Prefix: fmt.Sprintf("/bench/%d/", time.Now().UnixNano()), Host: "h"})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for i := 0; i < 100; i++ {
		if err := s.AddDataset(ctx, mkBackup(fmt.Sprintf("b%03d", i), "h", t0.Add(time.Duration(i)*time.Minute)), mailDataset("src", fmt.Sprintf("ds%03d", i), 1000)); err != nil {
			b.Fatal(err)
		}
	}
	for _, p := range []string{"*", "src/ds000/user000500"} {
		b.Run(p, func(b *testing.B) {
			for b.Loop() {
				if _, err := s.FindAtoms(ctx, FindRequest{Pattern: p}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
