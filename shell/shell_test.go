package shell

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// recorder is a slog.Handler that keeps every record.
type recorder struct {
	mu   sync.Mutex
	recs []record
}

type record struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	m := map[string]string{}
	rec.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	r.mu.Lock()
	r.recs = append(r.recs, record{rec.Level, rec.Message, m})
	r.mu.Unlock()
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

func (r *recorder) find(msg, stream string) (record, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.recs {
		if rec.msg == msg && (stream == "" || rec.attrs["stream"] == stream) {
			return rec, true
		}
	}
	return record{}, false
}

func testShell(t *testing.T, opts Options) (*Shell, *recorder) {
	t.Helper()
	rec := &recorder{}
	opts.Logger = slog.New(rec)
	if opts.KillGrace == 0 {
		opts.KillGrace = 300 * time.Millisecond
	}
	return New(opts), rec
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestOutput(t *testing.T) {
	sh, rec := testShell(t, Options{})
	out, err := sh.Output(testCtx(t), "echo hello; echo world; echo note >&2")
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "hello\nworld\n" {
		t.Fatalf("output = %q", out)
	}
	if _, ok := rec.find("hello", "stdout"); ok {
		t.Error("Output logged stdout")
	}
	if _, ok := rec.find("note", "stderr"); !ok {
		t.Error("stderr line not logged")
	}
}

func TestRunWithStdoutCallback(t *testing.T) {
	tests := []struct {
		name string
		cmd  string
		want []string
	}{
		{"lines", `printf 'a\nb\n'`, []string{"a", "b"}},
		{"last line without newline", `printf 'a\nb\nlast'`, []string{"a", "b", "last"}},
		{"empty lines kept", `printf 'a\n\nb\n'`, []string{"a", "", "b"}},
		{"crlf", `printf 'a\r\nb\r\n'`, []string{"a", "b"}},
		{"no output", `true`, nil},
		{"long line", `head -c 200000 /dev/zero | tr '\0' x; echo`, []string{strings.Repeat("x", 200000)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sh, _ := testShell(t, Options{})
			var got []string
			err := sh.RunWithStdoutCallback(testCtx(t), tt.cmd, func(line []byte) { got = append(got, string(line)) })
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, "|") != strings.Join(tt.want, "|") || len(got) != len(tt.want) {
				t.Fatalf("lines = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestRunLogsOutput(t *testing.T) {
	sh, rec := testShell(t, Options{})
	if err := sh.Run(testCtx(t), "echo out-line; echo err-line >&2"); err != nil {
		t.Fatal(err)
	}
	r, ok := rec.find("out-line", "stdout")
	if !ok || r.level != slog.LevelInfo {
		t.Errorf("stdout line not logged at info: %+v %v", r, ok)
	}
	r, ok = rec.find("err-line", "stderr")
	if !ok || r.attrs["pid"] == "0" || r.attrs["pid"] == "" {
		t.Errorf("stderr line not logged with pid: %+v %v", r, ok)
	}
}

func TestContextLoggerWins(t *testing.T) {
	sh, shellRec := testShell(t, Options{})
	ctxRec := &recorder{}
	ctx := ContextWithLogger(testCtx(t), slog.New(ctxRec).With("job", "j1"))
	if err := sh.Run(ctx, "echo via-ctx >&2"); err != nil {
		t.Fatal(err)
	}
	if _, ok := ctxRec.find("via-ctx", "stderr"); !ok {
		t.Error("context logger did not get the stderr line")
	}
	if _, ok := shellRec.find("via-ctx", ""); ok {
		t.Error("shell logger got the line although the context has a logger")
	}
}

func TestExitError(t *testing.T) {
	tests := []struct {
		cmd        string
		code       int
		sig        syscall.Signal
		wantInText []string
	}{
		{"exit 3", 3, 0, []string{"exit status 3"}},
		{"echo first >&2; echo 'boom: disk full' >&2; exit 1", 1, 0, []string{"exit status 1", "boom: disk full"}},
		{"kill -9 $$", -1, syscall.SIGKILL, []string{"signal 9"}},
		{"no-such-command-custos", 127, 0, []string{"exit status 127"}},
	}
	for _, tt := range tests {
		t.Run(tt.cmd, func(t *testing.T) {
			sh, _ := testShell(t, Options{})
			err := sh.Run(testCtx(t), tt.cmd)
			var se *Error
			if !errors.As(err, &se) {
				t.Fatalf("error %v (%T) is not *Error", err, err)
			}
			if se.ExitCode != tt.code || se.Signal != tt.sig {
				t.Fatalf("code %d signal %v, want %d %v", se.ExitCode, se.Signal, tt.code, tt.sig)
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Error("*exec.ExitError not reachable")
			}
			for _, w := range tt.wantInText {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if se.Cause != nil || errors.Is(err, context.Canceled) {
				t.Errorf("cause set without cancellation: %v", se.Cause)
			}
		})
	}
}

// gone reports whether pid has exited (it may linger as a zombie when
// nobody reaps orphans in the container).
func gone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return fields[0] == "Z" || fields[0] == "X"
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !gone(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("process %d survived", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// collectPids sends the numbers the command prints, one per line.
func collectPids(lines chan<- int) func([]byte) {
	return func(line []byte) {
		if n, err := strconv.Atoi(string(line)); err == nil {
			lines <- n
		}
	}
}

// expiring is a context whose deadline passes when the test says so, which
// keeps timeout tests free of wall-clock guesses.
type expiring struct {
	context.Context
	done chan struct{}
}

func (e *expiring) Done() <-chan struct{} { return e.done }
func (e *expiring) Err() error {
	select {
	case <-e.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

func TestTimeoutKillsProcessGroup(t *testing.T) {
	sh, _ := testShell(t, Options{})
	ctx := &expiring{Context: testCtx(t), done: make(chan struct{})}
	pids := make(chan int, 4)
	errc := make(chan error, 1)
	go func() {
		errc <- sh.RunWithStdoutCallback(ctx, `sleep 100 & echo $!; sh -c 'sleep 100 & echo $!; wait' & wait`, collectPids(pids))
	}()
	a, b := <-pids, <-pids
	close(ctx.done)
	err := <-errc
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	var se *Error
	if !errors.As(err, &se) || se.Signal != syscall.SIGTERM {
		t.Fatalf("err = %#v, want *Error with SIGTERM", err)
	}
	waitGone(t, a)
	waitGone(t, b)
}

func TestCancelKillsStubbornGrandchild(t *testing.T) {
	sh, _ := testShell(t, Options{KillGrace: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	pids := make(chan int, 4)
	errc := make(chan error, 1)
	go func() {
		// The grandchild ignores SIGTERM, so only the SIGKILL after the
		// grace period ends it.
		errc <- sh.RunWithStdoutCallback(ctx, `sh -c 'trap "" TERM; echo $$; exec sleep 100' & wait`, collectPids(pids))
	}()
	pid := <-pids
	cancel()
	err := <-errc
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	waitGone(t, pid)
}

func procNice(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	// Fields after the command name start with field 3 (state); nice is
	// field 19.
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	n, err := strconv.Atoi(fields[19-3])
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func ioprio(t *testing.T, pid int) (class, level int) {
	t.Helper()
	r, _, e := unix.Syscall(unix.SYS_IOPRIO_GET, 1, uintptr(pid), 0)
	if e != 0 {
		t.Fatalf("ioprio_get: %v", e)
	}
	return int(r) >> 13, int(r) & 0xff
}

func TestPriority(t *testing.T) {
	selfNice := procNice(t, os.Getpid())
	selfClass, _ := ioprio(t, os.Getpid())
	tests := []struct {
		name      string
		nice, io  int
		wantNice  int
		wantClass int
		wantLevel int
	}{
		{"nice and idle", 7, 3, 7, 3, 0},
		{"best-effort only", 0, 2, selfNice, 2, 4},
		{"nice only", 12, 0, 12, selfClass, -1},
		{"neither", 0, 0, selfNice, selfClass, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sh, _ := testShell(t, Options{})
			sh.SetNiceLevel(tt.nice)
			sh.SetIOClass(tt.io)
			ctx, cancel := context.WithCancel(testCtx(t))
			defer cancel()
			pids := make(chan int, 2)
			errc := make(chan error, 1)
			go func() {
				// Check a grandchild: the settings must be inherited.
				errc <- sh.RunWithStdoutCallback(ctx, `sleep 100 & echo $!; wait`, collectPids(pids))
			}()
			pid := <-pids
			if got := procNice(t, pid); got != tt.wantNice {
				t.Errorf("nice = %d, want %d", got, tt.wantNice)
			}
			class, level := ioprio(t, pid)
			if class != tt.wantClass || (tt.wantLevel >= 0 && level != tt.wantLevel) {
				t.Errorf("ioprio class %d level %d, want %d %d", class, level, tt.wantClass, tt.wantLevel)
			}
			cancel()
			<-errc
			waitGone(t, pid)
		})
	}
}

func TestInvalidPriority(t *testing.T) {
	for _, o := range []Options{{IOClass: 4}, {IOClass: -1}, {NiceLevel: 20}, {NiceLevel: -21}} {
		sh, _ := testShell(t, o)
		if err := sh.Run(testCtx(t), "true"); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
}

func TestDryRun(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "created")
	sh, rec := testShell(t, Options{})
	sh.SetDryRun(true)
	if !sh.DryRun() {
		t.Fatal("DryRun() = false")
	}
	ctx := testCtx(t)
	if err := sh.Run(ctx, "touch "+f); err != nil {
		t.Fatal(err)
	}
	out, err := sh.Output(ctx, "touch "+f+"; echo hi")
	if err != nil || len(out) != 0 {
		t.Fatalf("Output = %q, %v", out, err)
	}
	called := false
	if err := sh.RunWithStdoutCallback(ctx, "touch "+f+"; echo hi", func([]byte) { called = true }); err != nil || called {
		t.Fatalf("callback: %v called=%v", err, called)
	}
	p, err := sh.Start(ctx, "touch "+f+"; echo hi", StartOptions{PipeStdout: true, PipeStdin: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Stdin.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(p.Stdout); err != nil || len(b) != 0 {
		t.Fatalf("dry-run stdout = %q, %v", b, err)
	}
	if err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dry-run ran the command: %v", err)
	}
	r, ok := rec.find("dry-run: not running command", "")
	if !ok || r.attrs["cmd"] != "touch "+f {
		t.Fatalf("dry-run not logged: %+v", r)
	}
}

func TestEnv(t *testing.T) {
	base, _ := testShell(t, Options{Env: []string{"CUSTOS_A=base"}})
	sh := base.WithEnv("CUSTOS_SOURCE=src", "CUSTOS_DATASET=ds 1", "CUSTOS_A=override")
	ctx := testCtx(t)
	out, err := sh.Output(ctx, `echo "$CUSTOS_SOURCE/$CUSTOS_DATASET/$CUSTOS_A"`)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "src/ds 1/override\n" {
		t.Fatalf("out = %q", out)
	}
	out, err = base.Output(ctx, `echo "$CUSTOS_SOURCE/$CUSTOS_A"`)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "/base\n" {
		t.Fatalf("WithEnv changed the original: %q", out)
	}
}

func TestWithDir(t *testing.T) {
	dir := t.TempDir()
	sh, _ := testShell(t, Options{})
	out, err := sh.WithDir(dir).Output(testCtx(t), "pwd")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != dir {
		t.Fatalf("pwd = %q, want %q", got, dir)
	}
}

func TestStreamStdout(t *testing.T) {
	tests := []struct {
		name    string
		cmd     string
		want    string
		wantErr bool
		code    int
	}{
		{"complete", `printf 'part1\n'; printf 'part2'`, "part1\npart2", false, 0},
		{"large", `head -c 1000000 /dev/zero`, strings.Repeat("\x00", 1000000), false, 0},
		{"fails after output", `printf 'partial'; exit 2`, "partial", true, 2},
		{"killed after output", `printf 'partial'; kill -9 $$`, "partial", true, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sh, _ := testShell(t, Options{})
			p, err := sh.Start(testCtx(t), tt.cmd, StartOptions{PipeStdout: true})
			if err != nil {
				t.Fatal(err)
			}
			got, rerr := io.ReadAll(p.Stdout)
			werr := p.Wait()
			if string(got) != tt.want {
				t.Errorf("read %d bytes, want %d", len(got), len(tt.want))
			}
			if (rerr != nil) != tt.wantErr || (werr != nil) != tt.wantErr {
				t.Fatalf("read err %v, wait err %v, want error %v", rerr, werr, tt.wantErr)
			}
			if tt.wantErr {
				var se *Error
				if !errors.As(rerr, &se) || se.ExitCode != tt.code {
					t.Fatalf("read err %v, want *Error with exit code %d", rerr, tt.code)
				}
			}
		})
	}
}

func TestStreamCancelled(t *testing.T) {
	sh, _ := testShell(t, Options{})
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	p, err := sh.Start(ctx, `printf 'start\n'; sleep 100 & wait`, StartOptions{PipeStdout: true})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(p.Stdout, buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	_, err = io.ReadAll(p.Stdout)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("read after cancel: %v", err)
	}
	if err := p.Wait(); !errors.Is(err, context.Canceled) {
		t.Fatalf("wait: %v", err)
	}
}

func TestStreamStrayHoldsStdout(t *testing.T) {
	sh, _ := testShell(t, Options{KillGrace: 200 * time.Millisecond})
	p, err := sh.Start(testCtx(t), `printf 'data'; sleep 100 2>/dev/null & exit 0`, StartOptions{PipeStdout: true})
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(p.Stdout)
	if err == nil {
		t.Fatal("stream with a stray writer reported complete")
	}
	if string(got) != "data" {
		t.Fatalf("got %q", got)
	}
	if p.Wait() == nil {
		t.Fatal("Wait reported success")
	}
}

func TestRunStrayHoldsOutput(t *testing.T) {
	sh, _ := testShell(t, Options{KillGrace: 200 * time.Millisecond})
	pids := make(chan int, 1)
	err := sh.RunWithStdoutCallback(testCtx(t), `sleep 100 & echo $!`, collectPids(pids))
	if !errors.Is(err, exec.ErrWaitDelay) {
		t.Fatalf("err = %v, want ErrWaitDelay", err)
	}
	waitGone(t, <-pids)
}

func TestStreamStdin(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "restored")
	sh, _ := testShell(t, Options{})
	ctx := testCtx(t)

	p, err := sh.WithEnv("OUT="+out).Start(ctx, `cat > "$OUT"`, StartOptions{PipeStdin: true})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("restore me\n"), 100000)
	if _, err := p.Stdin.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := p.Stdin.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("restored %d bytes, %v", len(got), err)
	}
	os.Remove(out)

	// From an io.Reader.
	p, err = sh.WithEnv("OUT="+out).Start(ctx, `cat > "$OUT"`, StartOptions{Stdin: bytes.NewReader(data)})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("restored %d bytes, %v", len(got), err)
	}

	// A restore command that fails is reported by Wait, and writes to a
	// dead command fail instead of blocking.
	p, err = sh.Start(ctx, `exit 4`, StartOptions{PipeStdin: true})
	if err != nil {
		t.Fatal(err)
	}
	werr := p.Wait()
	var se *Error
	if !errors.As(werr, &se) || se.ExitCode != 4 {
		t.Fatalf("wait: %v", werr)
	}
	if _, err := p.Stdin.Write(data); err == nil {
		t.Fatal("write to exited command succeeded")
	}
	p.Stdin.Close()
}

func TestStartExclusiveStdin(t *testing.T) {
	sh, _ := testShell(t, Options{})
	if _, err := sh.Start(testCtx(t), "true", StartOptions{PipeStdin: true, Stdin: strings.NewReader("")}); err == nil {
		t.Fatal("no error for Stdin with PipeStdin")
	}
}

func TestCancelledBeforeStart(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "x")
	sh, _ := testShell(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := sh.Run(ctx, "touch "+f)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(f); err == nil {
		t.Fatal("command ran")
	}
}

func TestZeroShell(t *testing.T) {
	var sh Shell
	out, err := sh.Output(testCtx(t), "echo ok")
	if err != nil || string(out) != "ok\n" {
		t.Fatalf("%q %v", out, err)
	}
}

func TestConcurrentUse(t *testing.T) {
	sh, _ := testShell(t, Options{})
	ctx := testCtx(t)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sh.SetNiceLevel(i % 3)
			out, err := sh.WithEnv("N="+strconv.Itoa(i)).Output(ctx, `echo $N`)
			if err != nil || strings.TrimSpace(string(out)) != strconv.Itoa(i) {
				t.Errorf("%d: %q %v", i, out, err)
			}
		}()
	}
	wg.Wait()
}
