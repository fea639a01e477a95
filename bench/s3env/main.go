// Command s3env runs the S3 side of bench/compare.sh: the project's own
// versitygw test server (internal/s3server) on 127.0.0.1, and in front of it
// two internal/faultproxy proxies, one that holds every request for -delay
// before passing it on (a bucket in another region) and one that adds
// nothing. It creates the buckets named by -buckets, writes the addresses and
// credentials to -env as shell assignments (mode 0600: they hold the secret),
// and then runs until it receives SIGINT or SIGTERM, when it stops the server.
//
// Both packages are written for tests and take a testing.TB; tb adapts them
// to a command, so that the benchmark runs exactly the server setup the tests
// use rather than a copy of it.
package main

import (
	"flag"
	"fmt"
	"log"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/custos-backup/custos/internal/faultproxy"
	"github.com/custos-backup/custos/internal/s3server"
)

func main() {
	dir := flag.String("dir", "", "folder for the server's data (required)")
	env := flag.String("env", "", "file to write the shell assignments to (required)")
	delay := flag.Duration("delay", 30*time.Millisecond, "time the delaying proxy adds to every request")
	buckets := flag.String("buckets", "", "comma-separated buckets to create")
	flag.Parse()
	if *dir == "" || *env == "" {
		log.Fatal("s3env: -dir and -env are required")
	}
	t := &tb{dir: *dir}
	code := run(t, *env, *delay, *buckets)
	t.cleanup()
	os.Exit(code)
}

func run(t *tb, env string, delay time.Duration, buckets string) (code int) {
	// Fatalf panics with failure, so that the cleanups still run.
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(failure); !ok {
				panic(r)
			}
			code = 1
		}
	}()
	srv := s3server.Start(t)
	for _, b := range strings.Split(buckets, ",") {
		if b != "" {
			srv.CreateBucket(t, b)
		}
	}
	slow := faultproxy.Start(t, srv.Endpoint)
	if delay > 0 {
		// A stall with a deadline is a delay; MaxInt requests is every one.
		slow.StallNext(math.MaxInt, delay, faultproxy.Match{})
	}
	fast := faultproxy.Start(t, srv.Endpoint)
	vars := []string{
		"S3_DIR=" + srv.Dir,
		"S3_ENDPOINT=" + srv.Endpoint,
		"S3_SLOW=" + slow.URL(),
		"S3_FAST=" + fast.URL(),
		fmt.Sprintf("S3_DELAY_MS=%d", delay.Milliseconds()),
	}
	vars = append(vars, srv.Env()...)
	var b strings.Builder
	for _, v := range vars {
		k, val, _ := strings.Cut(v, "=")
		fmt.Fprintf(&b, "%s='%s'\n", k, val) // no value holds a quote
	}
	tmp := env + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		t.Fatalf("write %s: %v", tmp, err)
	}
	// Renamed into place, so a reader polling for the file never sees half.
	if err := os.Rename(tmp, env); err != nil {
		t.Fatalf("write %s: %v", env, err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	return 0
}

// failure is the panic value of tb.Fatalf.
type failure struct{}

// tb is the part of testing.TB that s3server and faultproxy use. The embedded
// interface is nil and only supplies the unexported method; calling any
// method not defined here panics, which would show that those packages
// started to need more.
type tb struct {
	testing.TB
	dir string

	mu       sync.Mutex
	cleanups []func()
	failed   bool
	temps    int
}

func (t *tb) Helper() {}

func (t *tb) Logf(format string, args ...any) { log.Printf(format, args...) }

func (t *tb) Fatalf(format string, args ...any) {
	log.Printf("s3env: "+format, args...)
	t.mu.Lock()
	t.failed = true
	t.mu.Unlock()
	panic(failure{})
}

func (t *tb) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

func (t *tb) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}

func (t *tb) TempDir() string {
	t.mu.Lock()
	t.temps++
	d := filepath.Join(t.dir, fmt.Sprintf("s3-%d", t.temps))
	t.mu.Unlock()
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatalf("make %s: %v", d, err)
	}
	return d
}

// cleanup runs the cleanups last first, as testing does.
func (t *tb) cleanup() {
	t.mu.Lock()
	fs := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}
