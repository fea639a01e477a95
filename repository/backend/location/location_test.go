package location_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-backup/custos/internal/faultproxy"
	"github.com/custos-backup/custos/internal/s3server"
	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/location"
	"github.com/custos-backup/custos/repository/backend/s3"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want location.Location
	}{
		{"/srv/repo", location.Location{Kind: location.Local, Path: "/srv/repo"}},
		{"./repo", location.Location{Kind: location.Local, Path: "./repo"}},
		{"../up/repo", location.Location{Kind: location.Local, Path: "../up/repo"}},
		{"repo", location.Location{Kind: location.Local, Path: "repo"}},
		{"backups/a:b", location.Location{Kind: location.Local, Path: "backups/a:b"}},
		{"./a:b", location.Location{Kind: location.Local, Path: "./a:b"}},
		{`C:\repo`, location.Location{Kind: location.Local, Path: `C:\repo`}},
		{"local:/srv/repo", location.Location{Kind: location.Local, Path: "/srv/repo"}},
		{"local:rel", location.Location{Kind: location.Local, Path: "rel"}},
		{"s3:http://127.0.0.1:9000/bucket/prefix", location.Location{Kind: location.S3, Endpoint: "http://127.0.0.1:9000", Bucket: "bucket", Prefix: "prefix"}},
		{"s3:https://s3.example.com/bucket", location.Location{Kind: location.S3, Endpoint: "https://s3.example.com", Bucket: "bucket"}},
		{"s3:https://s3.example.com/bucket/", location.Location{Kind: location.S3, Endpoint: "https://s3.example.com", Bucket: "bucket"}},
		{"s3:https://s3.example.com/bucket/a/b/c/", location.Location{Kind: location.S3, Endpoint: "https://s3.example.com", Bucket: "bucket", Prefix: "a/b/c"}},
		{"s3:http://[::1]:9000/b/p", location.Location{Kind: location.S3, Endpoint: "http://[::1]:9000", Bucket: "b", Prefix: "p"}},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := location.Parse(tc.in)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Fatalf("Parse(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"", "empty repository location"},
		{"   ", "empty repository location"},
		{"local:", `"local:": no path`},
		{"sftp:host:/x", `"sftp:host:/x": unknown kind "sftp"`},
		{"s3://bucket/prefix", `"s3://bucket/prefix": no endpoint`},
		{"s3:ftp://host/bucket", `"s3:ftp://host/bucket": endpoint scheme must be http or https`},
		{"s3:bucket/prefix", `"s3:bucket/prefix": endpoint scheme must be http or https`},
		{"s3:http://host", `"s3:http://host": no bucket`},
		{"s3:http://host/", `"s3:http://host/": no bucket`},
		{"s3:http:///bucket", `"s3:http:///bucket": no host`},
		{"s3:http://host/b/p?region=x", "query and fragment are not supported"},
		{"s3:http://host/b/p#frag", "query and fragment are not supported"},
		{"s3:http://host/b//p", "empty"},
		{"s3:http://host/b/../p", `".."`},
		{"s3:http://AKIA:supersecret@host/b", `"s3:http://xxxxx@host/b": credentials do not belong in the URL`},
		{"s3:http://user:supersecret@ho%zzst/b", `xxxxx@ho%zzst/b`},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			_, err := location.Parse(tc.in)
			if err == nil {
				t.Fatalf("Parse(%q) succeeded", tc.in)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse(%q) = %q, want it to contain %q", tc.in, err, tc.want)
			}
			if strings.Contains(err.Error(), "supersecret") {
				t.Fatalf("Parse(%q) error %q shows the secret", tc.in, err)
			}
		})
	}
}

func TestStringRoundTrip(t *testing.T) {
	for _, in := range []string{"local:/srv/repo", "s3:http://127.0.0.1:9000/b/p/q", "s3:https://h/b"} {
		l, err := location.Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		if l.String() != in {
			t.Errorf("Parse(%q).String() = %q", in, l.String())
		}
	}
}

func roundTrip(t *testing.T, url string) {
	t.Helper()
	ctx := context.Background()
	be, err := location.Create(ctx, url, location.Options{})
	if err != nil {
		t.Fatalf("Create(%q): %v", url, err)
	}
	h := backend.Handle{Type: backend.ConfigFile}
	if err := be.Save(ctx, h, bytes.NewReader([]byte("config")), 6); err != nil {
		t.Fatal(err)
	}
	be.Close()

	be, err = location.Open(ctx, url, location.Options{})
	if err != nil {
		t.Fatalf("Open(%q): %v", url, err)
	}
	defer be.Close()
	rd, err := be.Load(ctx, h, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if got, err := io.ReadAll(rd); err != nil || string(got) != "config" {
		t.Fatalf("config via Open(%q) = %q, %v", url, got, err)
	}
}

func TestLocal(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	roundTrip(t, dir)
	roundTrip(t, "local:"+dir)
	be, err := location.Open(context.Background(), dir, location.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(be.Location(), "local:") || !strings.HasSuffix(be.Location(), "/repo") {
		t.Errorf("Location() = %q", be.Location())
	}
	t.Chdir(filepath.Dir(dir))
	roundTrip(t, "./repo")
	roundTrip(t, "repo")
	if _, err := location.Open(context.Background(), "./missing", location.Options{}); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("Open(./missing) = %v, want ErrNotExist", err)
	}
}

func TestS3(t *testing.T) {
	srv := s3server.Start(t)
	srv.SetEnv(t)
	srv.CreateBucket(t, "repos")
	roundTrip(t, srv.URL("repos", "team/one"))
	roundTrip(t, srv.URL("repos", ""))

	be, err := location.Open(context.Background(), srv.URL("repos", "team/one"), location.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := be.Location(), srv.URL("repos", "team/one"); got != want {
		t.Errorf("Location() = %q, want %q", got, want)
	}
	// S3 comes wrapped in the retries, and keeps its clean-up.
	u, ok := be.(interface{ Unwrap() backend.Backend })
	if !ok {
		t.Fatalf("S3 backend %T is not wrapped", be)
	}
	if _, ok := u.Unwrap().(*s3.Backend); !ok {
		t.Errorf("wrapped backend is %T, want *s3.Backend", u.Unwrap())
	}
	if _, ok := be.(backend.LeftoverRemover); !ok {
		t.Errorf("wrapped S3 backend %T does not remove leftovers", be)
	}
	_, err = location.Create(context.Background(), srv.URL("no-bucket", "x"), location.Options{})
	if !errors.Is(err, s3.ErrBucketNotFound) || !strings.Contains(err.Error(), `"no-bucket"`) {
		t.Errorf("Create on a missing bucket = %v, want ErrBucketNotFound naming it", err)
	}
}

// TestS3OpenRetries: a server that fails the first bucket checks does not
// fail Open; requests of the opened backend are retried too.
func TestS3OpenRetries(t *testing.T) {
	srv := s3server.Start(t)
	srv.SetEnv(t)
	srv.CreateBucket(t, "repos")
	p := faultproxy.Start(t, srv.Endpoint)
	url := "s3:" + p.URL() + "/repos/r"
	p.FailNext(2, 503, faultproxy.Match{Method: "GET"})
	be, err := location.Create(context.Background(), url, location.Options{})
	if err != nil {
		t.Fatalf("Create after two 503s: %v", err)
	}
	defer be.Close()
	if got := p.Count(faultproxy.Match{Method: "GET"}); got != 3 {
		t.Errorf("Create made %d bucket checks, want 3", got)
	}
	p.FailNext(1, 500, faultproxy.Match{Method: "PUT"})
	h := backend.Handle{Type: backend.ConfigFile}
	if err := be.Save(context.Background(), h, bytes.NewReader([]byte("c")), 1); err != nil {
		t.Fatalf("Save after a 500: %v", err)
	}
	if got := p.Count(faultproxy.Match{Method: "PUT"}); got != 2 {
		t.Errorf("Save made %d PUTs, want 2", got)
	}
}
