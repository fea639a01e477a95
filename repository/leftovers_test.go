package repository

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3api "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/custos-backup/custos/internal/s3server"
	"github.com/custos-backup/custos/repository/backend/location"
	"github.com/custos-backup/custos/repository/format"
)

// TestOnlyWritersRemoveLeftovers: the incomplete multipart uploads a killed
// save leaves on S3 are aborted by backup and prune, which write, and never
// by check, which only reads.
func TestOnlyWritersRemoveLeftovers(t *testing.T) {
	ctx := context.Background()
	srv := s3server.Start(t)
	srv.CreateBucket(t, "custos")
	srv.SetEnv(t)
	be, err := location.Create(ctx, srv.URL("custos", "r"), location.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := Init(ctx, be, InitOptions{Password: []byte("pw"), kdfParams: cheapKDF, PackSize: format.MinPackSize})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.BackupStream(ctx, "x", bytes.NewReader(randBytes(1, 5000)), BackupOptions{Dataset: "d"}); err != nil {
		t.Fatal(err)
	}
	c := srv.Client(t)
	startUpload := func() {
		t.Helper()
		key := "r/data/cd/cd" + strings.Repeat("0", 62)
		if _, err := c.CreateMultipartUpload(ctx, &s3api.CreateMultipartUploadInput{Bucket: aws.String("custos"), Key: aws.String(key)}); err != nil {
			t.Fatal(err)
		}
	}
	uploads := func() int {
		t.Helper()
		out, err := c.ListMultipartUploads(ctx, &s3api.ListMultipartUploadsInput{Bucket: aws.String("custos")})
		if err != nil {
			t.Fatal(err)
		}
		return len(out.Uploads)
	}

	startUpload()
	mustCheckClean(t, r, true)
	if n := uploads(); n != 1 {
		t.Fatalf("%d uploads after check, want the 1 left alone", n)
	}
	// Negative: every upload counts as old, even with the server's time
	// stamps rounded down to the second.
	r.leftoverAge = -time.Minute
	if _, err := r.BackupStream(ctx, "y", bytes.NewReader(randBytes(2, 5000)), BackupOptions{Dataset: "d"}); err != nil {
		t.Fatal(err)
	}
	if n := uploads(); n != 0 {
		t.Fatalf("%d uploads after backup, want them aborted", n)
	}

	startUpload()
	lock, err := r.Lock(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	// A prune three hours from now: the upload is older than its cutoff.
	if _, err := r.prune(ctx, lock, time.Now().Add(3*time.Hour), PruneOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := lock.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if n := uploads(); n != 0 {
		t.Fatalf("%d uploads after prune, want them aborted", n)
	}
}
