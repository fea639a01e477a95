package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/custos-backup/custos/repository"
	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/location"
)

// repoFlags holds the flags every "custos repo" subcommand shares: where the
// repository is and how to unlock it.
type repoFlags struct {
	repo            string
	passwordFile    string
	passwordCommand string
	quiet           bool
	connections     int
	cacheDir        string
	noCache         bool
}

// locationOptions: a remote repository's snapshot and index files and tree packs are kept
// under --cache-dir, else $CUSTOS_CACHE_DIR, else the user's cache folder
// (~/.cache/custos/repositories), unless --no-cache.
func (f *repoFlags) locationOptions() location.Options {
	if f.noCache {
		return location.Options{}
	}
	dir := f.cacheDir
	if dir == "" {
		dir = os.Getenv("CUSTOS_CACHE_DIR")
	}
	if dir == "" {
		if d, err := os.UserCacheDir(); err == nil {
			dir = filepath.Join(d, "custos", "repositories")
		}
	}
	return location.Options{CacheDir: dir}
}

// newRepoCmd returns the "custos repo" command group.
func newRepoCmd() *cobra.Command {
	f := &repoFlags{}
	cmd := &cobra.Command{
		Use:   "repo",
		Short: "Work with a repository directly (no agent, no etcd)",
		Long: `Work with a repository directly (no agent, no etcd).

The repository is given by --repo URL or the environment variable
CUSTOS_REPOSITORY. URLs: /path, ./rel, local:/path,
s3:http(s)://host:port/bucket/prefix (S3 credentials come from the standard
AWS chain: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, shared files).

The password is read from --password-file F, else from the output of
--password-command CMD (run with /bin/sh -c), else from the file named by
CUSTOS_PASSWORD_FILE, else from CUSTOS_PASSWORD, else it is asked for on the
terminal. A single trailing newline of a password file or command output is
ignored.`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVarP(&f.repo, "repo", "r", "", "repository URL (default $CUSTOS_REPOSITORY)")
	pf.StringVarP(&f.passwordFile, "password-file", "p", "", "file holding the repository password (default $CUSTOS_PASSWORD_FILE, then $CUSTOS_PASSWORD)")
	pf.StringVar(&f.passwordCommand, "password-command", "", "shell command that prints the repository password")
	cmd.MarkFlagsMutuallyExclusive("password-file", "password-command")
	pf.BoolVarP(&f.quiet, "quiet", "q", false, "print no progress")
	pf.IntVar(&f.connections, "connections", 0, "requests to keep in flight on the repository's storage (default: 16 on S3; on a local folder, by the CPUs)")
	pf.StringVar(&f.cacheDir, "cache-dir", "", "where copies of an S3 repository's snapshot and index files and tree packs are kept (default $CUSTOS_CACHE_DIR, then ~/.cache/custos/repositories)")
	pf.BoolVar(&f.noCache, "no-cache", false, "keep no copies of an S3 repository's files")
	cmd.AddCommand(
		newRepoInitCmd(f),
		newRepoBackupCmd(f),
		newRepoSnapshotsCmd(f),
		newRepoRestoreCmd(f),
		newRepoCheckCmd(f),
		newRepoCopyCmd(f),
		newRepoForgetCmd(f),
		newRepoPruneCmd(f),
		newRepoStatsCmd(f),
		newRepoUnlockCmd(f),
		newRepoLsCmd(f),
		newRepoFindCmd(f),
		newRepoKeyCmd(f),
	)
	return cmd
}

// url returns the repository URL from the flag or the environment.
func (f *repoFlags) url() (string, error) {
	u := f.repo
	if u == "" {
		u = os.Getenv("CUSTOS_REPOSITORY")
	}
	if u == "" {
		return "", errors.New("no repository given: use --repo URL or set CUSTOS_REPOSITORY")
	}
	return u, nil
}

// password finds the password for the main repository. It returns nil
// without error when none is configured and no terminal is attached, so that
// unencrypted repositories open without one.
func (f *repoFlags) password(prompt bool) ([]byte, error) {
	if f.passwordCommand != "" {
		return passwordFromCommand(f.passwordCommand, "repository password")
	}
	return findPassword(f.passwordFile, "CUSTOS_PASSWORD_FILE", "CUSTOS_PASSWORD", "repository password", prompt)
}

// passwordFromCommand runs a password manager's command (pass, vault,
// secret-tool). Its stderr goes to ours, so it can ask for a PIN; the
// command text, which may hold a token, stays out of errors.
func passwordFromCommand(command, what string) ([]byte, error) {
	c := exec.Command("/bin/sh", "-c", command)
	c.Stdin, c.Stderr = os.Stdin, os.Stderr
	out, err := c.Output()
	if err != nil {
		return nil, fmt.Errorf("--password-command for the %s failed: %w", what, err)
	}
	out = trimOneNewline(out)
	if len(out) == 0 {
		return nil, fmt.Errorf("--password-command for the %s printed nothing", what)
	}
	return out, nil
}

// findPassword reads a password from file (a flag value), or the file named
// by envFile, or the value of envPass, or the terminal. The password itself
// never appears in an error.
func findPassword(file, envFile, envPass, what string, prompt bool) ([]byte, error) {
	if file == "" {
		file = os.Getenv(envFile)
	}
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("reading %s file: %w", what, err)
		}
		b = trimOneNewline(b)
		if len(b) == 0 {
			return nil, fmt.Errorf("%s file %s is empty", what, file)
		}
		return b, nil
	}
	if v, ok := os.LookupEnv(envPass); ok && v != "" {
		return []byte(v), nil
	}
	if !prompt {
		return nil, nil
	}
	fd := int(os.Stdin.Fd())
	if !term.IsTerminal(fd) {
		return nil, nil
	}
	fmt.Fprintf(os.Stderr, "enter %s: ", what)
	b, err := term.ReadPassword(fd)
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return nil, fmt.Errorf("reading %s from the terminal: %w", what, err)
	}
	return b, nil
}

func trimOneNewline(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte("\n"))
	return bytes.TrimSuffix(b, []byte("\r"))
}

// indexMode says how a command's open loads the repository's index.
type indexMode int

const (
	indexStrict   indexMode = iota // a damaged index file fails the open
	indexTolerant                  // a damaged index file is reported and left out
	indexNone                      // not loaded: check reads every index file itself
)

// open opens the repository named by the flags.
func (f *repoFlags) open(ctx context.Context) (*repository.Repository, error) {
	return f.openMode(ctx, indexStrict)
}

// openReading opens the repository for commands that only read (restore,
// listings): a damaged index file is reported and the rest of the
// repository stays usable.
func (f *repoFlags) openReading(ctx context.Context) (*repository.Repository, error) {
	return f.openMode(ctx, indexTolerant)
}

func (f *repoFlags) openMode(ctx context.Context, mode indexMode) (*repository.Repository, error) {
	u, err := f.url()
	if err != nil {
		return nil, err
	}
	pw, err := f.password(true)
	if err != nil {
		return nil, err
	}
	r, err := openRepo(ctx, u, f.locationOptions(), pw, "--password-file, --password-command, CUSTOS_PASSWORD_FILE or CUSTOS_PASSWORD", mode)
	if err != nil {
		return nil, err
	}
	r.SetConnections(f.connections)
	return r, nil
}

// openRepo opens the repository at url and turns the common failures into
// one actionable line.
func openRepo(ctx context.Context, url string, lo location.Options, pw []byte, pwHint string, mode indexMode) (*repository.Repository, error) {
	be, err := location.Open(ctx, url, lo)
	if errors.Is(err, backend.ErrNotExist) {
		return nil, withExitCode(exitNoRepository, fmt.Errorf("no repository found at %s (create one with: custos repo init --repo %s)", url, url))
	}
	if err != nil {
		return nil, fmt.Errorf("opening repository at %s: %w", url, err)
	}
	var r *repository.Repository
	switch mode {
	case indexTolerant:
		var damaged []string
		r, damaged, err = repository.OpenTolerant(ctx, be, pw)
		for _, d := range damaged {
			fmt.Fprintf(os.Stderr, "warning: damaged index file %s (run custos repo check)\n", d)
		}
	case indexNone:
		r, err = repository.OpenForCheck(ctx, be, pw)
	default:
		r, err = repository.Open(ctx, be, pw)
	}
	if err != nil {
		_ = be.Close()
		switch {
		case errors.Is(err, repository.ErrNotInitialized):
			return nil, withExitCode(exitNoRepository, fmt.Errorf("no repository found at %s (create one with: custos repo init --repo %s)", url, url))
		case errors.Is(err, repository.ErrWrongPassword) && len(pw) == 0:
			return nil, withExitCode(exitWrongPassword, fmt.Errorf("repository at %s is encrypted: give its password with %s", url, pwHint))
		case errors.Is(err, repository.ErrWrongPassword):
			return nil, withExitCode(exitWrongPassword, fmt.Errorf("wrong password for repository at %s (check %s)", url, pwHint))
		}
		return nil, fmt.Errorf("opening repository at %s: %w", url, err)
	}
	return r, nil
}

func newRepoInitCmd(f *repoFlags) *cobra.Command {
	var (
		unencrypted bool
		kdf         string
		packSize    string
		chunkerName string
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a new repository",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			u, err := f.url()
			if err != nil {
				return err
			}
			opts := repository.InitOptions{Unencrypted: unencrypted, KDF: kdf, Chunker: chunkerName}
			switch chunkerName {
			case "gear", "rabin":
			default:
				return fmt.Errorf("--chunker %q: want gear or rabin", chunkerName)
			}
			if packSize != "" {
				if opts.PackSize, err = parseSize(packSize); err != nil {
					return fmt.Errorf("--pack-size: %w", err)
				}
			}
			switch kdf {
			case "", "scrypt", "argon2id":
			default:
				return fmt.Errorf("--kdf %q: want scrypt or argon2id", kdf)
			}
			if !unencrypted {
				if opts.Password, err = f.password(true); err != nil {
					return err
				}
				if len(opts.Password) == 0 {
					return errors.New("a password is required for an encrypted repository: use --password-file, CUSTOS_PASSWORD_FILE or CUSTOS_PASSWORD (or --insecure-no-encryption)")
				}
			}
			be, err := location.Create(ctx, u, f.locationOptions())
			if err != nil {
				return fmt.Errorf("creating repository at %s: %w", u, err)
			}
			r, err := repository.Init(ctx, be, opts)
			if err != nil {
				_ = be.Close()
				return fmt.Errorf("creating repository at %s: %w", u, err)
			}
			defer r.Close()
			enc := "encrypted"
			if unencrypted {
				enc = "UNENCRYPTED"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created %s repository %s at %s\n", enc, r.ID(), u)
			return nil
		},
	}
	cmd.Flags().BoolVar(&unencrypted, "insecure-no-encryption", false, "create the repository without encryption (anyone with access to the storage can read it)")
	cmd.Flags().StringVar(&kdf, "kdf", "argon2id", "key derivation function: argon2id or scrypt")
	cmd.Flags().StringVar(&packSize, "pack-size", "", "target pack size, e.g. 16M (default 16 MiB)")
	cmd.Flags().StringVar(&chunkerName, "chunker", "gear", "content-defined chunker: gear (FastCDC, about 3 times faster) or rabin (restic's, the only one of repositories made before December 2026)")
	return cmd
}

// parseSize reads a byte count such as "100M", "1.5G", "512K" or "4096".
// Suffixes are binary (K = 1024); a trailing "B" or "iB" is accepted.
func parseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(t, "IB")
	t = strings.TrimSuffix(t, "B")
	mult := float64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad size %q (want e.g. 100M, 2G, 4096)", s)
	}
	return int64(v * mult), nil
}

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeJSONLine prints v as one line of JSON, for streams of records.
func writeJSONLine(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}
