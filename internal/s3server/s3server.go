// Package s3server starts a real S3 protocol server (versitygw with its posix
// backend) on 127.0.0.1 for tests, so that S3 code is tested against a real
// server rather than a mock.
//
// The binary is found in $CUSTOS_VERSITYGW, else in
// <user cache dir>/custos/bin/versitygw@v1.8.0/versitygw; if it is missing
// there it is built with `go install` (a few minutes, once per machine; a file
// lock keeps parallel test binaries from racing). If it cannot be had, the
// test fails: S3 tests are never skipped.
package s3server

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Version is the versitygw release the tests run against.
const Version = "v1.8.0"

const module = "github.com/versity/versitygw/cmd/versitygw"

// startTimeout bounds how long a fresh server may take to answer.
const startTimeout = 60 * time.Second

// Server is a running versitygw. Its fields are read-only.
type Server struct {
	Endpoint  string // "http://127.0.0.1:PORT"
	AccessKey string
	Secret    string
	Region    string
	Dir       string // the posix root; each bucket is a folder in it

	cmd      *exec.Cmd
	exited   chan struct{}
	output   *syncBuffer
	stopOnce sync.Once
}

// Start runs a new server with its own root folder and port, and stops it
// when the test ends.
func Start(tb testing.TB) *Server {
	tb.Helper()
	bin, err := Binary()
	if err != nil {
		tb.Fatalf("s3server: %v", err)
	}
	dir := tb.TempDir()
	var lastErr error
	// The free port is found by binding and releasing it, so another process
	// can grab it before versitygw does; then try another port.
	for try := 0; try < 3; try++ {
		s, err := start(bin, dir)
		if err == nil {
			tb.Cleanup(func() {
				s.Stop()
				if tb.Failed() {
					tb.Logf("versitygw at %s said:\n%s", s.Endpoint, s.output.String())
				}
			})
			return s
		}
		lastErr = err
	}
	tb.Fatalf("s3server: %v", lastErr)
	return nil
}

func start(bin, dir string) (*Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &Server{
		Endpoint:  fmt.Sprintf("http://127.0.0.1:%d", port),
		AccessKey: "CUSTOS" + strings.ToUpper(randomHex(7)),
		Secret:    randomHex(20),
		Region:    "us-east-1",
		Dir:       dir,
		exited:    make(chan struct{}),
		output:    &syncBuffer{},
	}
	cmd := exec.Command(bin,
		"--port", fmt.Sprintf("127.0.0.1:%d", port),
		"--region", s.Region,
		"--keep-alive",
		"--quiet",
		"posix", dir)
	// Through the environment rather than argv, which other users can read.
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.Secret)
	cmd.Stdout = s.output
	cmd.Stderr = s.output
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	s.cmd = cmd
	go func() {
		_ = cmd.Wait()
		close(s.exited)
	}()
	if err := s.waitReady(); err != nil {
		s.Stop()
		return nil, fmt.Errorf("versitygw at %s: %w; output:\n%s", s.Endpoint, err, s.output.String())
	}
	return s, nil
}

// waitReady polls until the server answers HTTP at all (an anonymous request
// gets 403, which is fine) or the process dies.
func (s *Server) waitReady() error {
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(startTimeout)
	for delay := 10 * time.Millisecond; ; delay = min(delay*2, 200*time.Millisecond) {
		resp, err := client.Get(s.Endpoint + "/")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not answering after %v: %w", startTimeout, err)
		}
		select {
		case <-s.exited:
			return errors.New("exited before it was ready")
		case <-time.After(delay):
		}
	}
}

// Stop kills the server's process group and waits for it to go.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		if s.cmd == nil || s.cmd.Process == nil {
			return
		}
		// Negative pid: the whole process group (Setpgid in procAttr).
		if err := syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL); err != nil {
			_ = s.cmd.Process.Kill()
		}
		<-s.exited
	})
}

// CreateBucket makes a bucket, failing the test if it cannot.
func (s *Server) CreateBucket(tb testing.TB, name string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.Client(tb).CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		tb.Fatalf("s3server: create bucket %q at %s: %v", name, s.Endpoint, err)
	}
}

// Client returns an SDK client with the root credentials and path-style
// addressing, independent of the environment.
func (s *Server) Client(tb testing.TB) *s3.Client {
	return s3.New(s3.Options{
		BaseEndpoint: aws.String(s.Endpoint),
		Region:       s.Region,
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(s.AccessKey, s.Secret, ""),
	})
}

// URL returns a custos repository URL for bucket and prefix on this server.
func (s *Server) URL(bucket, prefix string) string {
	u := "s3:" + s.Endpoint + "/" + bucket
	if prefix = strings.Trim(prefix, "/"); prefix != "" {
		u += "/" + prefix
	}
	return u
}

// Env returns the environment that points the standard AWS credential chain
// at this server's root account.
func (s *Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.Secret,
		"AWS_REGION=" + s.Region,
	}
}

// SetEnv sets Env for the rest of the test, and hides the user's own AWS
// configuration so that only these credentials are found.
func (s *Server) SetEnv(tb testing.TB) {
	tb.Helper()
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		tb.Setenv(k, v)
	}
	none := filepath.Join(tb.TempDir(), "no-aws-config")
	tb.Setenv("AWS_CONFIG_FILE", none)
	tb.Setenv("AWS_SHARED_CREDENTIALS_FILE", none)
	for _, k := range []string{"AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"} {
		tb.Setenv(k, "")
	}
}

// Binary returns the path of the versitygw binary, installing it into the
// user cache folder if it is not there yet.
func Binary() (string, error) {
	if p := os.Getenv("CUSTOS_VERSITYGW"); p != "" {
		if err := executable(p); err != nil {
			return "", fmt.Errorf("versitygw from $CUSTOS_VERSITYGW: %w", err)
		}
		return p, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find versitygw: %w", err)
	}
	dir := filepath.Join(cache, "custos", "bin", "versitygw@"+Version)
	return install(dir)
}

func executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

// install makes sure dir/versitygw exists, building it if needed. A lock file
// next to dir serialises concurrent installers (test binaries of several
// packages run in parallel); the binary is built in a temp folder and renamed
// into place, so a half-written binary is never found.
func install(dir string) (string, error) {
	bin := filepath.Join(dir, "versitygw")
	if executable(bin) == nil {
		return bin, nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", fmt.Errorf("install versitygw: %w", err)
	}
	unlock, err := lockFile(dir + ".lock")
	if err != nil {
		return "", fmt.Errorf("install versitygw: %w", err)
	}
	defer unlock()
	if executable(bin) == nil { // someone else installed it while we waited
		return bin, nil
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("versitygw is not at %s and there is no go command to build it: %w", bin, err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".versitygw-install-")
	if err != nil {
		return "", fmt.Errorf("install versitygw: %w", err)
	}
	defer os.RemoveAll(tmp)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "install", module+"@"+Version)
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOFLAGS=-mod=mod")
	cmd.Dir = tmp // outside any module, so go.mod here plays no part
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("versitygw is not at %s and `go install %s@%s` failed: %w\n%s", bin, module, Version, err, out)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("install versitygw: %w", err)
	}
	if err := os.Rename(filepath.Join(tmp, "versitygw"), bin); err != nil {
		return "", fmt.Errorf("install versitygw: %w", err)
	}
	return bin, nil
}

func lockFile(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported systems
	}
	return hex.EncodeToString(b)
}

// syncBuffer collects the server's output; the process writes to it from
// other goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
