package main

import (
	"context"
	"errors"

	"github.com/custos-backup/custos/repository"
)

// Exit statuses, as restic's, so that scripts written for it keep working.
const (
	exitOK            = 0
	exitFailure       = 1
	exitPartial       = 3   // the snapshot was saved, but some files could not be read
	exitNoRepository  = 10  // no repository at the location
	exitWrongPassword = 12  // the password does not open the repository
	exitInterrupted   = 130 // Ctrl-C or SIGTERM
)

// codedError carries the exit status its cause calls for through the
// wrapping that the commands add.
type codedError struct {
	code int
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

func withExitCode(code int, err error) error { return &codedError{code: code, err: err} }

// exitCode is the process's exit status for the error a command returned;
// ctx is the command's context, whose end means an interrupt.
func exitCode(ctx context.Context, err error) int {
	var ce *codedError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ce):
		return ce.code
	case ctx.Err() != nil:
		return exitInterrupted
	case errors.Is(err, repository.ErrWrongPassword):
		return exitWrongPassword
	case errors.Is(err, repository.ErrNotInitialized):
		return exitNoRepository
	}
	return exitFailure
}
