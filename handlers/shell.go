package handlers

import (
	"context"
	"fmt"
	"io"

	"github.com/custos-backup/custos/shell"
)

// FromShell adapts the shell package to Shell, so that nice, ionice,
// dry-run and process-group kill apply to handler commands too.
func FromShell(sh *shell.Shell) Shell { return shellAdapter{sh} }

type shellAdapter struct{ sh *shell.Shell }

func (a shellAdapter) Run(ctx context.Context, c Command) error {
	sh := a.sh.WithEnv(c.Env...)
	if c.Dir != "" {
		sh = sh.WithDir(c.Dir)
	}
	p, err := sh.Start(ctx, c.Line, shell.StartOptions{Stdin: c.Stdin, PipeStdout: c.Stdout != nil})
	if err != nil {
		return err
	}
	if c.Stdout == nil {
		return p.Wait()
	}
	// The shell's stdout reader returns the command's error instead of EOF
	// when it failed, so a copy that ends cleanly means a command that did.
	_, cerr := io.Copy(c.Stdout, p.Stdout)
	p.Stdout.Close()
	werr := p.Wait()
	switch {
	case werr != nil:
		return werr
	case cerr != nil:
		return fmt.Errorf("command %q: copy its output: %w", c.Line, cerr)
	}
	return nil
}
