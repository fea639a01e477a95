package main

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/custos-backup/custos/repository"
)

// newRepoKeyCmd manages the passwords (key files) of a repository.
func newRepoKeyCmd(f *repoFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "key",
		Short: "Manage the passwords of a repository: list, add, remove, passwd",
		Long: `Every password that opens a repository is a key file wrapping the same
master key. The repository is opened with the password given as usual
(--password-file, --password-command, ...); the new password comes from
--new-password-file.`,
	}
	var newPW, kdf string
	var asJSON bool
	newPassword := func() ([]byte, error) {
		pw, err := findPassword(newPW, "CUSTOS_NEW_PASSWORD_FILE", "CUSTOS_NEW_PASSWORD", "new password", true)
		if err != nil {
			return nil, err
		}
		if len(pw) == 0 {
			return nil, errors.New("no new password: give --new-password-file F (or CUSTOS_NEW_PASSWORD_FILE, CUSTOS_NEW_PASSWORD)")
		}
		return pw, nil
	}
	list := &cobra.Command{
		Use: "list", Short: "List the keys; * marks the one that opened the repository", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			r, err := f.open(ctx)
			if err != nil {
				return err
			}
			defer r.Close()
			keys, err := r.Keys(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), keys)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, " \tID\tCREATED\tHOST\tKDF")
			for _, k := range keys {
				cur := " "
				if k.Current {
					cur = "*"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", cur, k.ID[:8], k.Created.Local().Format("2006-01-02 15:04:05"), k.Hostname, k.KDF)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	// withRepo opens the repository, runs fn and prints its message.
	withRepo := func(fn func(ctx context.Context, r *repository.Repository, args []string) (string, error)) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r, err := f.open(ctx)
			if err != nil {
				return err
			}
			defer r.Close()
			msg, err := fn(ctx, r, args)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), msg)
			return err
		}
	}
	add := &cobra.Command{
		Use: "add", Short: "Add a password", Args: cobra.NoArgs,
		RunE: withRepo(func(ctx context.Context, r *repository.Repository, _ []string) (string, error) {
			pw, err := newPassword()
			if err != nil {
				return "", err
			}
			id, err := r.AddKey(ctx, pw, kdf)
			if err != nil {
				return "", err
			}
			return "added key " + id[:8], nil
		}),
	}
	remove := &cobra.Command{
		Use: "remove ID", Short: "Remove a password (not the one used to open the repository, not the last)", Args: cobra.ExactArgs(1),
		RunE: withRepo(func(ctx context.Context, r *repository.Repository, args []string) (string, error) {
			id, err := r.RemoveKey(ctx, args[0])
			if err != nil {
				return "", err
			}
			return "removed key " + id[:8], nil
		}),
	}
	passwd := &cobra.Command{
		Use: "passwd", Short: "Change the password used to open the repository", Args: cobra.NoArgs,
		RunE: withRepo(func(ctx context.Context, r *repository.Repository, _ []string) (string, error) {
			pw, err := newPassword()
			if err != nil {
				return "", err
			}
			id, err := r.ChangePassword(ctx, pw, kdf)
			if err != nil {
				return "", err
			}
			return "password changed: key " + id[:8] + " replaces the old one", nil
		}),
	}
	for _, c := range []*cobra.Command{add, passwd} {
		c.Flags().StringVar(&newPW, "new-password-file", "", "file holding the new password (default $CUSTOS_NEW_PASSWORD_FILE, then $CUSTOS_NEW_PASSWORD)")
		c.Flags().StringVar(&kdf, "kdf", "argon2id", "key derivation: argon2id or scrypt")
	}
	cmd.AddCommand(list, add, remove, passwd)
	return cmd
}
