package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/custos-backup/custos/agent"
)

func newExportCmd() *cobra.Command {
	var path, pattern, host, olderThan string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "export --bagit PATTERN DIR",
		Short: "Export the newest version of every atom matching a pattern as BagIt bags",
		Long: `Write one BagIt bag (RFC 8493, BagIt 1.0) per atom matching PATTERN into DIR,
for the newest version (or the newest older than --older-than), as restore
picks them. Each bag is DIR/<source>_<dataset>_<atom>_<time>: data/ holds the
atom's files (file atoms, under their path) or its stream (pipe atoms, one
file named after the atom); manifest-sha256.txt carries the SHA-256 digests
recorded at ingest, and every file's bytes are checked against them as they
are written; bag-info.txt names the source, host, backup, snapshot and
ingest time; tagmanifest-sha256.txt covers the tag files. A bag appears
under its name only once complete. Exits non-zero if any atom failed. Only
this host's backups unless --host is given ("*" = any host).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if pattern == "" {
				return errors.New("say what to export: --bagit PATTERN")
			}
			before, err := parseOlderThan(olderThan, time.Now())
			if err != nil {
				return err
			}
			dir, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			env, err := openCLI(ctx, path, false, slog.LevelWarn)
			if err != nil {
				return err
			}
			defer env.Close()
			bags, err := env.mgr.ExportBagIt(ctx, agent.ExportRequest{Pattern: pattern, Host: host, OlderThan: before, Dir: dir})
			if asJSON {
				type jsonBag struct {
					Atom     string    `json:"atom"`
					BackupID string    `json:"backup_id"`
					Time     time.Time `json:"time"`
					Host     string    `json:"host"`
					Path     string    `json:"path"`
					Files    int       `json:"files"`
					Bytes    int64     `json:"bytes"`
					Skipped  []string  `json:"skipped,omitempty"`
				}
				out := make([]jsonBag, 0, len(bags))
				for _, b := range bags {
					out = append(out, jsonBag(b))
				}
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if jerr := enc.Encode(out); jerr != nil && err == nil {
					err = jerr
				}
				return err
			}
			for _, b := range bags {
				fmt.Fprintf(cmd.OutOrStdout(), "exported %s (backup %s, %s): %d files, %s -> %s\n",
					b.Atom, b.BackupID, b.Time.Local().Format("2006-01-02 15:04:05"), b.Files, agent.HumanBytes(b.Bytes), b.Path)
				for _, s := range b.Skipped {
					fmt.Fprintf(cmd.ErrOrStderr(), "  not exported (not a regular file): %s\n", s)
				}
			}
			return err
		},
	}
	configFlag(cmd, &path)
	cmd.Flags().StringVar(&pattern, "bagit", "", "atoms to export as BagIt bags (source/dataset/atom, with * and ?)")
	cmd.Flags().StringVar(&host, "host", "", `export backups of this host (default: this host; "*" = any)`)
	cmd.Flags().StringVar(&olderThan, "older-than", "", "export the newest version older than this: a duration (24h) or a time (RFC 3339)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the bags written as JSON")
	return cmd
}
