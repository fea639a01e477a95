package s3_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/s3"
)

// classRecorder is a reverse proxy in front of versitygw that notes the
// x-amz-storage-class header of every request that creates an object:
// versitygw ignores the header, so only the wire shows what was sent.
type classRecorder struct {
	srv *httptest.Server
	mu  sync.Mutex
	// by "METHOD path": the header's value ("" when absent)
	sent map[string]string
	seen []string // "METHOD path?query", in order
	// restoreBody is the body of the last RestoreObject request.
	restoreBody string
}

func startClassRecorder(t *testing.T, target string) *classRecorder {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	c := &classRecorder{sent: map[string]string{}}
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(u)
		r.Out.Host = r.In.Host // signed by the client: keep it
	}}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.seen = append(c.seen, r.Method+" "+r.URL.RequestURI())
		if r.Method == http.MethodPut && r.URL.Query().Get("partNumber") == "" || r.Method == http.MethodPost && r.URL.Query().Has("uploads") {
			c.sent[r.Method+" "+r.URL.Path] = r.Header.Get("X-Amz-Storage-Class")
		}
		if r.URL.Query().Has("restore") {
			b, _ := io.ReadAll(r.Body)
			c.restoreBody = string(b)
			r.Body = io.NopCloser(bytes.NewReader(b))
		}
		c.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *classRecorder) count(substr string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, s := range c.seen {
		if strings.Contains(s, substr) {
			n++
		}
	}
	return n
}

// TestArchiveStorageClass: with an archive class set, packs are written
// in it, in one request or in parts, and every other file in STANDARD;
// ArchiveState and RequestRestore reach the server. What versitygw v1.8.0
// does with them is asserted too, because it bounds what custos's tests
// can show against it: it stores and reports every object as STANDARD
// and answers RestoreObject with 501 NotImplemented (which must not be
// retried).
func TestArchiveStorageClass(t *testing.T) {
	srv := startServer(t)
	rec := startClassRecorder(t, srv.Endpoint)
	opts := options(rec.srv.URL, "cold")
	opts.Archive = s3.Archive{StorageClass: "DEEP_ARCHIVE", RestoreTier: "Bulk", RestoreDays: 5}
	be := open(t, opts)
	// The archive calls are found through the retry wrapper.
	arch, ok := backend.AsArchiver(be)
	if !ok {
		t.Fatal("the wrapped S3 backend offers no Archiver")
	}
	ctx := context.Background()

	small := bytes.Repeat([]byte("p"), 1000)
	large := bytes.Repeat([]byte("P"), 6<<20) // above the tests' multipart threshold
	files := []struct {
		h         backend.Handle
		data      []byte
		method    string
		wantClass string
	}{
		{backend.Handle{Type: backend.PackFile, Name: strings.Repeat("a", 64)}, small, "PUT", "DEEP_ARCHIVE"},
		{backend.Handle{Type: backend.PackFile, Name: strings.Repeat("b", 64)}, large, "POST", "DEEP_ARCHIVE"},
		{backend.Handle{Type: backend.IndexFile, Name: strings.Repeat("c", 64)}, small, "PUT", ""},
		{backend.Handle{Type: backend.SnapshotFile, Name: strings.Repeat("d", 64)}, small, "PUT", ""},
		{backend.Handle{Type: backend.KeyFile, Name: strings.Repeat("e", 64)}, small, "PUT", ""},
		{backend.Handle{Type: backend.ConfigFile}, small, "PUT", ""},
	}
	for _, f := range files {
		if err := be.Save(ctx, f.h, bytes.NewReader(f.data), int64(len(f.data))); err != nil {
			t.Fatalf("save %s: %v", f.h, err)
		}
		key := f.method + " /" + bucket + "/cold/" + f.h.Path()
		got, ok := rec.sent[key]
		if !ok || got != f.wantClass {
			t.Errorf("%s: storage class %q sent (request seen: %v), want %q", f.h, got, ok, f.wantClass)
		}
		st, err := arch.ArchiveState(ctx, f.h)
		if err != nil {
			t.Fatalf("archive state of %s: %v", f.h, err)
		}
		// versitygw keeps everything in STANDARD: nothing it holds is
		// ever archived, so it cannot show a restore.
		if st.StorageClass != "STANDARD" || st.Archived || st.Restore != backend.RestoreNone || !st.Readable() {
			t.Errorf("archive state of %s on versitygw: %+v", f.h, st)
		}
	}

	pack := files[0].h
	err := arch.RequestRestore(ctx, pack)
	if err == nil || !strings.Contains(err.Error(), "does not implement RestoreObject") || !strings.Contains(err.Error(), pack.Path()) {
		t.Fatalf("restore request on versitygw: %v", err)
	}
	if n := rec.count("?restore"); n != 1 {
		t.Fatalf("the restore request was sent %d times; a 501 is final", n)
	}
	for _, want := range []string{"<Days>5</Days>", "<Tier>Bulk</Tier>"} {
		if !strings.Contains(rec.restoreBody, want) {
			t.Errorf("the restore request does not say %s: %s", want, rec.restoreBody)
		}
	}
	if _, err := arch.ArchiveState(ctx, backend.Handle{Type: backend.PackFile, Name: strings.Repeat("f", 64)}); !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("archive state of a missing pack: %v", err)
	}
}

func TestArchiveCheck(t *testing.T) {
	for _, tc := range []struct {
		a     s3.Archive
		field string
		msg   string
	}{
		{a: s3.Archive{}},
		{a: s3.Archive{StorageClass: "GLACIER", RestoreTier: "Bulk", RestoreDays: 2}},
		{a: s3.Archive{StorageClass: "DEEP_ARCHIVE", RestoreTier: "Standard"}},
		{a: s3.Archive{StorageClass: "STANDARD_IA"}},
		{a: s3.Archive{StorageClass: "glacier"}, field: "storage_class", msg: `unknown storage class "glacier"`},
		{a: s3.Archive{StorageClass: "GLACIER", RestoreTier: "Slow"}, field: "restore_tier", msg: `unknown restore tier "Slow"`},
		{a: s3.Archive{StorageClass: "DEEP_ARCHIVE", RestoreTier: "Expedited"}, field: "restore_tier", msg: "no Expedited"},
		{a: s3.Archive{StorageClass: "STANDARD", RestoreTier: "Bulk"}, field: "restore_tier", msg: "needs an archive storage_class"},
		{a: s3.Archive{RestoreDays: 3}, field: "restore_days", msg: "needs an archive storage_class"},
		{a: s3.Archive{StorageClass: "GLACIER", RestoreDays: -1}, field: "restore_days", msg: "1 or more"},
	} {
		field, err := tc.a.Check()
		if tc.field == "" {
			if err != nil {
				t.Errorf("%+v: %s: %v", tc.a, field, err)
			}
			continue
		}
		if field != tc.field || err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%+v: %s: %v, want %s: %s", tc.a, field, err, tc.field, tc.msg)
		}
	}
}
