package s3server_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/custos-backup/custos/internal/s3server"
)

func TestServerRoundTrip(t *testing.T) {
	ctx := context.Background()
	// Two servers at once: each has its own port, root and credentials.
	a, b := s3server.Start(t), s3server.Start(t)
	if a.Endpoint == b.Endpoint || a.Dir == b.Dir || a.Secret == b.Secret {
		t.Fatalf("servers share endpoint, folder or secret: %+v %+v", a, b)
	}
	for _, s := range []*s3server.Server{a, b} {
		if !strings.HasPrefix(s.Endpoint, "http://127.0.0.1:") {
			t.Fatalf("Endpoint %q is not on 127.0.0.1", s.Endpoint)
		}
		s.CreateBucket(t, "bkt")
		c := s.Client(t)
		body := "hello from " + s.Endpoint
		if _, err := c.PutObject(ctx, &s3.PutObjectInput{
			Bucket: aws.String("bkt"), Key: aws.String("p/obj"), Body: strings.NewReader(body),
		}); err != nil {
			t.Fatalf("PutObject: %v", err)
		}
		out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("bkt"), Key: aws.String("p/obj")})
		if err != nil {
			t.Fatalf("GetObject: %v", err)
		}
		got, err := io.ReadAll(out.Body)
		out.Body.Close()
		if err != nil || string(got) != body {
			t.Fatalf("GetObject = %q, %v; want %q", got, err, body)
		}
		// The posix backend keeps objects as files under Dir/bucket.
		onDisk, err := os.ReadFile(filepath.Join(s.Dir, "bkt", "p", "obj"))
		if err != nil || string(onDisk) != body {
			t.Fatalf("object on disk = %q, %v", onDisk, err)
		}
	}
	if got, want := a.URL("bkt", "/some/prefix/"), "s3:"+a.Endpoint+"/bkt/some/prefix"; got != want {
		t.Errorf("URL = %q, want %q", got, want)
	}
	if got, want := a.URL("bkt", ""), "s3:"+a.Endpoint+"/bkt"; got != want {
		t.Errorf("URL = %q, want %q", got, want)
	}
}

func TestEnv(t *testing.T) {
	s := s3server.Start(t)
	env := strings.Join(s.Env(), "\n")
	for _, want := range []string{"AWS_ACCESS_KEY_ID=" + s.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s.Secret, "AWS_REGION="} {
		if !strings.Contains(env, want) {
			t.Errorf("Env() lacks %q", want)
		}
	}
	s.SetEnv(t)
	if os.Getenv("AWS_SECRET_ACCESS_KEY") != s.Secret || os.Getenv("AWS_PROFILE") != "" {
		t.Error("SetEnv did not set the AWS environment")
	}
}

func TestStop(t *testing.T) {
	s := s3server.Start(t)
	s.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := s.Client(t).ListBuckets(ctx, &s3.ListBucketsInput{}); err == nil {
		t.Fatal("server still answers after Stop")
	}
	s.Stop() // idempotent
}

func TestBinaryFromEnv(t *testing.T) {
	t.Setenv("CUSTOS_VERSITYGW", filepath.Join(t.TempDir(), "no-such-binary"))
	if _, err := s3server.Binary(); err == nil || !strings.Contains(err.Error(), "CUSTOS_VERSITYGW") {
		t.Fatalf("Binary() with a bad $CUSTOS_VERSITYGW = %v, want an error naming it", err)
	}
}
