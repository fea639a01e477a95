// Command catalogfill fills a custos catalog (the embedded etcd of a
// work_dir) with synthetic backups, for bench/catalog-scale.sh: -datasets
// datasets of -atoms atoms each, one backup per dataset, names
// src/dsNNN/atomNNNNNN.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/custos-backup/custos/metadata"
)

func main() {
	dir := flag.String("dir", "", "the embedded catalog's data dir (work_dir/etcd)")
	host := flag.String("host", "bench", "host of the backups")
	datasets := flag.Int("datasets", 100, "datasets")
	atoms := flag.Int("atoms", 1000, "atoms per dataset")
	flag.Parse()
	if *dir == "" {
		log.Fatal("catalogfill: -dir is required")
	}
	ctx := context.Background()
	conn, err := metadata.Connect(ctx, metadata.Config{Embedded: true, DataDir: *dir})
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	st, err := metadata.NewStore(conn.Client, metadata.Options{Host: *host})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	snap := strings.Repeat("ab", 32)
	start := time.Now()
	t0 := time.Now().Add(-time.Duration(*datasets) * time.Minute)
	for i := 0; i < *datasets; i++ {
		ts := t0.Add(time.Duration(i) * time.Minute)
		b := &metadata.Backup{ID: fmt.Sprintf("%s-%03d", ts.UTC().Format("20060102T150405Z"), i), Timestamp: ts, Host: *host}
		d := &metadata.Dataset{ID: b.ID + "/src/ds", Source: "src", Name: fmt.Sprintf("ds%03d", i), Handler: "file",
			Repository: "local", SnapshotID: snap, TotalFiles: int64(*atoms)}
		for j := 0; j < *atoms; j++ {
			a := fmt.Sprintf("atom%06d", j)
			d.Atoms = append(d.Atoms, metadata.Atom{Name: a, Path: "data/" + a, SnapshotID: snap})
		}
		if err := st.AddDataset(ctx, b, d); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Printf("wrote %d datasets x %d atoms in %s\n", *datasets, *atoms, time.Since(start).Round(time.Millisecond))
}
