// Package shell runs the external commands of custos (pre/post hooks, pipe
// handler commands, datasets_command) through /bin/sh -c, because users
// write shell in their configuration.
//
// Every command runs in its own process group. When the context is
// cancelled or its deadline passes, the whole group (the shell, its
// children and grandchildren) gets SIGTERM, and SIGKILL after a grace
// period (Options.KillGrace, default 5s). The nice level and the I/O
// scheduling class are applied to the command before it runs anything, so
// every descendant inherits them; no external nice/ionice binaries are
// needed. In dry-run mode commands are logged and not run.
//
// # Streams
//
// For a backup command whose stdout is stored, Start with PipeStdout and
// read Process.Stdout to the end. The reader returns io.EOF only when the
// command has exited with status 0; if the command failed, was killed or
// timed out, the read that would have returned io.EOF returns the *Error
// instead. A consumer that stops at the first error (such as
// repository.BackupStream) therefore never mistakes a partial stream for a
// complete one. For a restore command, Start with PipeStdin (or Stdin), write
// the stream, close Process.Stdin and call Wait, whose error decides.
//
// Read Stdout (or Close it) before or while calling Wait; Wait does not
// drain it. If the command exits but processes it left behind keep its
// output open, they are killed after the grace period and the command
// counts as failed.
//
// # Logging
//
// stderr is logged line by line at Info with stream=stderr; stdout of Run
// (and of Start without PipeStdout) is logged at Info with stream=stdout,
// stdout of RunWithStdoutCallback at Debug; Output does not log stdout. The
// logger is the one attached to ctx with ContextWithLogger if any, else the
// Shell's Options.Logger, else slog.Default(); so a job can attach its own
// attributes (job id, dataset) for the commands it runs.
//
// Commands appear in debug and dry-run logs, never in errors (which reach
// the API and the catalog). Pass secrets in environment variables
// (WithEnv), whose values are never logged, not on the command line.
//
// Failing to apply the nice level or I/O class (for example a negative nice
// level without CAP_SYS_NICE) is logged as a warning; the command still runs.
package shell

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultKillGrace is the delay between SIGTERM and SIGKILL when
// Options.KillGrace is zero.
const DefaultKillGrace = 5 * time.Second

// Options configure a Shell.
type Options struct {
	// NiceLevel is the absolute nice level (-20..19) of commands; 0 leaves
	// the agent's own level.
	NiceLevel int
	// IOClass is the I/O scheduling class as in ionice(1): 1 realtime,
	// 2 best-effort, 3 idle; 0 leaves the agent's own class.
	IOClass int
	// DryRun logs commands instead of running them.
	DryRun bool
	// Env holds extra "KEY=value" entries added to os.Environ(); later
	// entries override earlier ones and the agent's environment.
	Env []string
	// Dir is the working directory of commands; "" means the agent's.
	Dir string
	// Logger receives command output and diagnostics; nil means
	// slog.Default(). A logger attached to the context wins.
	Logger *slog.Logger
	// KillGrace is the delay between SIGTERM and SIGKILL of the process
	// group on cancellation; 0 means DefaultKillGrace.
	KillGrace time.Duration
}

// Shell runs commands with /bin/sh -c. Its methods are safe for concurrent
// use; the setters affect commands started afterwards.
type Shell struct {
	mu   sync.RWMutex
	opts Options
}

// New returns a Shell with the given options.
func New(opts Options) *Shell {
	opts.Env = slices.Clone(opts.Env)
	return &Shell{opts: opts}
}

// SetNiceLevel sets the absolute nice level of commands (0 = inherit).
func (s *Shell) SetNiceLevel(n int) {
	s.mu.Lock()
	s.opts.NiceLevel = n
	s.mu.Unlock()
}

// SetIOClass sets the ionice(1) I/O class of commands: 1 realtime,
// 2 best-effort, 3 idle, 0 inherit.
func (s *Shell) SetIOClass(n int) {
	s.mu.Lock()
	s.opts.IOClass = n
	s.mu.Unlock()
}

// SetDryRun turns dry-run mode on or off.
func (s *Shell) SetDryRun(v bool) {
	s.mu.Lock()
	s.opts.DryRun = v
	s.mu.Unlock()
}

// DryRun reports whether commands are only logged.
func (s *Shell) DryRun() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.opts.DryRun
}

// Options returns a copy of the current settings.
func (s *Shell) Options() Options {
	s.mu.RLock()
	defer s.mu.RUnlock()
	o := s.opts
	o.Env = slices.Clone(o.Env)
	return o
}

func (s *Shell) clone(edit func(*Options)) *Shell {
	o := s.Options()
	edit(&o)
	return &Shell{opts: o}
}

// WithEnv returns a copy of s whose commands also get the given
// "KEY=value" environment entries (e.g. CUSTOS_SOURCE=...). s is unchanged.
func (s *Shell) WithEnv(kv ...string) *Shell {
	return s.clone(func(o *Options) { o.Env = append(o.Env, kv...) })
}

// WithLogger returns a copy of s that logs to l.
func (s *Shell) WithLogger(l *slog.Logger) *Shell {
	return s.clone(func(o *Options) { o.Logger = l })
}

// WithDir returns a copy of s that runs commands in dir.
func (s *Shell) WithDir(dir string) *Shell {
	return s.clone(func(o *Options) { o.Dir = dir })
}

type loggerKey struct{}

// ContextWithLogger attaches a logger to ctx; commands run with that
// context log to it instead of the Shell's logger.
func ContextWithLogger(ctx context.Context, l *slog.Logger) context.Context {
	return context.WithValue(ctx, loggerKey{}, l)
}

func (o *Options) logger(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey{}).(*slog.Logger); ok && l != nil {
		return l
	}
	if o.Logger != nil {
		return o.Logger
	}
	return slog.Default()
}

// Error describes a command that did not complete successfully.
type Error struct {
	Command  string
	ExitCode int            // -1 if killed by a signal
	Signal   syscall.Signal // 0 unless killed by a signal
	Stderr   string         // last non-empty line of stderr, truncated
	Cause    error          // ctx.Err() if the command was killed for its context
	Err      error          // the underlying error from os/exec, or a description
}

func (e *Error) Error() string {
	// The command text stays out of the message: it can hold a secret
	// (MYSQL_PWD=... mysqldump), and messages reach the API, the catalog
	// and logs. The caller names which command (pre_backup_command, the
	// dataset); e.Command is there for a debugger.
	var b strings.Builder
	switch {
	case e.Cause != nil:
		fmt.Fprintf(&b, "%v", e.Cause)
		if e.Err != nil {
			fmt.Fprintf(&b, " (%v)", e.Err)
		}
	case e.Err != nil:
		b.WriteString(e.Err.Error())
	default:
		fmt.Fprintf(&b, "exit status %d", e.ExitCode)
	}
	if e.Stderr != "" {
		fmt.Fprintf(&b, ": %s", e.Stderr)
	}
	return b.String()
}

// Unwrap gives access to the context error (errors.Is(err,
// context.DeadlineExceeded)) and to the *exec.ExitError.
func (e *Error) Unwrap() []error {
	var errs []error
	if e.Cause != nil {
		errs = append(errs, e.Cause)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// Run runs cmd, logging its stdout and stderr.
func (s *Shell) Run(ctx context.Context, cmd string) error {
	p, err := s.start(ctx, cmd, StartOptions{}, nil, slog.LevelInfo)
	if err != nil {
		return err
	}
	return p.Wait()
}

// Output runs cmd and returns its stdout. In dry-run mode it returns an
// empty result.
func (s *Shell) Output(ctx context.Context, cmd string) ([]byte, error) {
	var buf bytes.Buffer
	p, err := s.start(ctx, cmd, StartOptions{}, &buf, 0)
	if err != nil {
		return nil, err
	}
	if err := p.Wait(); err != nil {
		return buf.Bytes(), err
	}
	return buf.Bytes(), nil
}

// RunWithStdoutCallback runs cmd and calls fn with every line of its
// stdout, without the line terminator; a last line without a newline is
// delivered too. fn is called from one goroutine at a time and the line is
// only valid during the call.
func (s *Shell) RunWithStdoutCallback(ctx context.Context, cmd string, fn func(line []byte)) error {
	lw := &lineWriter{fn: fn}
	p, err := s.start(ctx, cmd, StartOptions{}, lw, slog.LevelDebug)
	if err != nil {
		return err
	}
	err = p.Wait()
	lw.flush()
	return err
}

// StartOptions choose how a started command's stdin and stdout are
// connected.
type StartOptions struct {
	// Stdin, if set, is copied to the command's stdin. Without Stdin or
	// PipeStdin the command reads /dev/null.
	Stdin io.Reader
	// PipeStdin makes Process.Stdin a pipe to the command's stdin.
	PipeStdin bool
	// PipeStdout makes Process.Stdout a pipe from the command's stdout;
	// otherwise stdout is logged.
	PipeStdout bool
}

// Start starts cmd and returns without waiting for it. See the package
// documentation for the stream semantics. In dry-run mode the command is
// logged and a Process is returned whose Stdout is empty, whose Stdin
// discards, and whose Wait returns nil.
func (s *Shell) Start(ctx context.Context, cmd string, opts StartOptions) (*Process, error) {
	if opts.Stdin != nil && opts.PipeStdin {
		return nil, fmt.Errorf("command %q: Stdin and PipeStdin are exclusive", cmd)
	}
	return s.start(ctx, cmd, opts, nil, slog.LevelInfo)
}

// Process is a started command.
type Process struct {
	// Pid is the process id of the /bin/sh running the command, which is
	// also its process group id. 0 in dry-run mode.
	Pid int
	// Stdin writes to the command's stdin (PipeStdin only). Close it to
	// signal the end of the input.
	Stdin io.WriteCloser
	// Stdout reads the command's stdout (PipeStdout only). It returns
	// io.EOF only after the command exited successfully.
	Stdout io.ReadCloser

	command string
	done    chan struct{} // closed when the command has been waited for
	err     error         // valid after done
	stdoutR *os.File      // our end of the stdout pipe, if any
	strays  chan bool     // result of the stray check; see watchStrays
	readEOF chan struct{} // closed when Stdout reached EOF on the pipe
	eofOnce sync.Once
}

// Wait waits for the command to exit and returns nil or an *Error. It may
// be called more than once and from several goroutines.
func (p *Process) Wait() error {
	<-p.done
	if p.strays != nil {
		if killed := <-p.strays; killed {
			p.strays <- killed // keep the answer for the next caller
			return p.strayErr()
		}
		p.strays <- false
	}
	return p.err
}

func (p *Process) strayErr() error {
	if p.err != nil {
		return p.err
	}
	return &Error{Command: p.command, Err: errors.New("processes left behind by the command kept its stdout open and were killed")}
}

func (s *Shell) start(ctx context.Context, command string, opts StartOptions, stdout io.Writer, stdoutLevel slog.Level) (*Process, error) {
	o := s.Options()
	log := o.logger(ctx)
	if o.DryRun {
		log.Info("dry-run: not running command", "cmd", command)
		p := &Process{done: make(chan struct{})}
		close(p.done)
		if opts.PipeStdout {
			p.Stdout = io.NopCloser(strings.NewReader(""))
		}
		if opts.PipeStdin {
			p.Stdin = nopWriteCloser{io.Discard}
		}
		return p, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, &Error{Command: command, ExitCode: -1, Cause: err, Err: errors.New("not started")}
	}
	if o.IOClass < 0 || o.IOClass > 3 {
		return nil, fmt.Errorf("command %q: invalid I/O class %d (want 0..3)", command, o.IOClass)
	}
	if o.NiceLevel < -20 || o.NiceLevel > 19 {
		return nil, fmt.Errorf("command %q: invalid nice level %d (want -20..19)", command, o.NiceLevel)
	}
	grace := o.KillGrace
	if grace <= 0 {
		grace = DefaultKillGrace
	}

	gated := o.NiceLevel != 0 || o.IOClass != 0
	args := []string{"-c", command}
	if gated {
		// The shell waits on fd 3 until we have set its priority, then
		// execs the real command: every process the command creates
		// inherits the settings, with no window in which a child could be
		// forked at the old priority.
		args = []string{"-c", `read -r _ <&3; exec 3<&-; exec /bin/sh -c "$1"`, "custos-shell", command}
	}
	c := exec.CommandContext(ctx, "/bin/sh", args...)
	c.Dir = o.Dir
	c.Env = append(os.Environ(), o.Env...)
	// Pdeathsig: if this process is killed outright (SIGKILL, the OOM
	// killer), nothing would stop the command's group on cancel; the
	// kernel kills the command instead, so no orphaned dump keeps running
	// (and holding locks) after an agent or worker dies.
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	c.WaitDelay = grace

	p := &Process{done: make(chan struct{}), command: command}
	// The output goroutines start inside c.Start, before p.Pid is set:
	// they wait for started, closed once the pid is known (or the start
	// failed), so that every line is logged with its pid.
	var pid atomic.Int64
	started := make(chan struct{})
	stderr := &lineWriter{fn: func(line []byte) {
		<-started
		log.LogAttrs(context.WithoutCancel(ctx), slog.LevelInfo, string(line), slog.String("stream", "stderr"), slog.Int64("pid", pid.Load()))
	}, keepLast: true}
	c.Stderr = stderr
	var stdoutLog *lineWriter
	switch {
	case opts.PipeStdout:
	case stdout != nil:
		c.Stdout = stdout
	default:
		stdoutLog = &lineWriter{fn: func(line []byte) {
			<-started
			log.LogAttrs(context.WithoutCancel(ctx), stdoutLevel, string(line), slog.String("stream", "stdout"), slog.Int64("pid", pid.Load()))
		}}
		c.Stdout = stdoutLog
	}
	if opts.Stdin != nil {
		c.Stdin = opts.Stdin
	}

	// Pipes are made by hand rather than with Cmd.StdoutPipe, because Wait
	// would close those before the caller has read everything.
	var closeAfterStart []*os.File
	closeAll := func(fs ...*os.File) {
		for _, f := range fs {
			if f != nil {
				f.Close()
			}
		}
	}
	var stdoutW, stdinR, stdinW, gateR, gateW *os.File
	var err error
	if opts.PipeStdout {
		if p.stdoutR, stdoutW, err = os.Pipe(); err != nil {
			return nil, fmt.Errorf("command %q: stdout pipe: %w", command, err)
		}
		c.Stdout = stdoutW
		closeAfterStart = append(closeAfterStart, stdoutW)
	}
	if opts.PipeStdin {
		if stdinR, stdinW, err = os.Pipe(); err != nil {
			closeAll(p.stdoutR, stdoutW)
			return nil, fmt.Errorf("command %q: stdin pipe: %w", command, err)
		}
		c.Stdin = stdinR
		closeAfterStart = append(closeAfterStart, stdinR)
	}
	if gated {
		if gateR, gateW, err = os.Pipe(); err != nil {
			closeAll(p.stdoutR, stdoutW, stdinR, stdinW)
			return nil, fmt.Errorf("command %q: pipe: %w", command, err)
		}
		c.ExtraFiles = []*os.File{gateR}
		closeAfterStart = append(closeAfterStart, gateR)
	}

	// Cancellation: the whole group gets SIGTERM, then SIGKILL after the
	// grace period even if the shell itself is already gone, so that
	// grandchildren which ignore SIGTERM die too.
	var ctxKilled atomic.Bool
	c.Cancel = func() error {
		ctxKilled.Store(true)
		pgid := c.Process.Pid
		log.Debug("killing command process group", "cmd", command, "pgid", pgid, "reason", context.Cause(ctx))
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		time.AfterFunc(grace, func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) })
		return nil
	}

	log.Debug("running command", "cmd", command)
	if err := c.Start(); err != nil {
		close(started)
		closeAll(closeAfterStart...)
		closeAll(p.stdoutR, stdinW, gateW)
		return nil, fmt.Errorf("command %q: start: %w", command, err)
	}
	closeAll(closeAfterStart...)
	p.Pid = c.Process.Pid
	pid.Store(int64(p.Pid))
	close(started)
	if gated {
		for _, e := range applyPriority(p.Pid, o.NiceLevel, o.IOClass) {
			log.Warn("could not apply priority to command; running it anyway", "cmd", command, "error", e)
		}
		// The command proceeds whether or not the write succeeds: EOF
		// ends the read too.
		_, _ = gateW.Write([]byte("\n"))
		gateW.Close()
	}

	if stdinW != nil {
		p.Stdin = stdinW
	}
	if p.stdoutR != nil {
		p.readEOF = make(chan struct{})
		p.strays = make(chan bool, 1)
		p.Stdout = &streamReader{p: p}
	}

	go func() {
		werr := c.Wait()
		if stdoutLog != nil {
			stdoutLog.flush()
		}
		stderr.flush()
		p.err = exitError(ctx, command, werr, ctxKilled.Load(), stderr.lastLine())
		if errors.Is(werr, exec.ErrWaitDelay) {
			// The shell exited but something it started still holds its
			// output: end that group so nothing lingers.
			_ = syscall.Kill(-p.Pid, syscall.SIGKILL)
		}
		close(p.done)
		if p.strays != nil {
			go p.watchStrays(grace, log, command)
		}
	}()
	return p, nil
}

// watchStrays handles a command that exited while processes it left behind
// still hold the stdout pipe, so the reader would never see EOF. After the
// grace period the group is killed; if anything was there to kill, the
// stream is reported as incomplete.
func (p *Process) watchStrays(grace time.Duration, log *slog.Logger, command string) {
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.readEOF:
		p.strays <- false
		return
	case <-t.C:
	}
	if err := syscall.Kill(-p.Pid, syscall.SIGKILL); err == nil {
		log.Warn("command exited but left processes holding its stdout; killed them", "cmd", command, "pgid", p.Pid)
		p.strays <- true
		return
	}
	p.strays <- false
}

func exitError(ctx context.Context, command string, werr error, ctxKilled bool, lastStderr string) error {
	if werr == nil {
		return nil
	}
	e := &Error{Command: command, ExitCode: -1, Stderr: lastStderr, Err: werr}
	var ee *exec.ExitError
	if errors.As(werr, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.Signal = ws.Signal()
			e.Err = &wrapped{msg: fmt.Sprintf("killed by signal %d (%v)", int(e.Signal), e.Signal), err: ee}
		} else {
			e.ExitCode = ee.ExitCode()
			e.Err = &wrapped{msg: fmt.Sprintf("exit status %d", e.ExitCode), err: ee}
		}
	} else if errors.Is(werr, exec.ErrWaitDelay) {
		e.ExitCode = 0
		e.Err = &wrapped{msg: "exited, but processes it left behind kept its output open and were killed", err: werr}
	}
	if ctxKilled {
		e.Cause = context.Cause(ctx)
		if e.Cause == nil {
			e.Cause = ctx.Err()
		}
	}
	return e
}

// wrapped gives an underlying error a readable message while keeping it
// reachable with errors.As.
type wrapped struct {
	msg string
	err error
}

func (w *wrapped) Error() string { return w.msg }
func (w *wrapped) Unwrap() error { return w.err }

// streamReader is Process.Stdout: it turns the end of the pipe into io.EOF
// only when the command succeeded.
type streamReader struct {
	p *Process
}

func (r *streamReader) Read(b []byte) (int, error) {
	n, err := r.p.stdoutR.Read(b)
	if err == io.EOF {
		r.p.eofOnce.Do(func() { close(r.p.readEOF) })
		if werr := r.p.Wait(); werr != nil {
			return n, werr
		}
		return n, io.EOF
	}
	return n, err
}

// Close closes the read end; a command still writing gets SIGPIPE.
func (r *streamReader) Close() error {
	r.p.eofOnce.Do(func() { close(r.p.readEOF) })
	return r.p.stdoutR.Close()
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// maxLine bounds how much of a line without newline is buffered before it
// is delivered anyway.
const maxLine = 1 << 20

// lineWriter splits what is written to it into lines.
type lineWriter struct {
	mu       sync.Mutex
	buf      []byte
	fn       func([]byte)
	keepLast bool
	last     string
}

func (w *lineWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			if len(w.buf) >= maxLine {
				w.emit(w.buf)
				w.buf = w.buf[:0]
			}
			break
		}
		w.emit(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	// Keep the buffer from growing by compacting what is left.
	if cap(w.buf) > 64<<10 && len(w.buf) < 4<<10 {
		w.buf = append([]byte(nil), w.buf...)
	}
	return len(b), nil
}

func (w *lineWriter) emit(line []byte) {
	line = bytes.TrimSuffix(line, []byte("\r"))
	if w.keepLast {
		if t := strings.TrimSpace(string(line)); t != "" {
			if len(t) > 200 {
				t = t[:200] + "..."
			}
			w.last = t
		}
	}
	w.fn(line)
}

func (w *lineWriter) lastLine() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.emit(w.buf)
		w.buf = nil
	}
}
