// Package s3 stores a repository in an S3 bucket (AWS or any S3-compatible
// server) under an optional key prefix. The key of an object is
// prefix + "/" + Handle.Path() (just Handle.Path() without a prefix).
//
// Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY, shared config and credentials files, SSO, IMDS ...)
// unless Options.Credentials is set. The region comes from the chain too and
// defaults to "us-east-1".
//
// The backend tries each request once: the SDK's own retries are switched
// off, and repository/backend/retry, which wraps the backend where it is
// opened (repository/backend/location), retries whole operations with the
// one backoff of custos, so that attempts do not multiply. Errors tell the
// wrapper whether they are worth retrying (RetryableError, the SDK's
// interface): server errors (5xx), throttling and broken connections are, by
// the SDK's checks, and so is a stall, an attempt during which no bytes move
// for Options.StallTimeout: a server that accepts a connection and never
// answers is abandoned, not waited on forever. Permanent errors (no such
// bucket, bad credentials, access denied) are not; they name the bucket and
// the object. Loads that break midway resume from where they stopped (pinned
// to the object's ETag), at most Options.MaxAttempts-1 times.
//
// Objects above Options.MultipartThreshold are uploaded in parts of
// Options.PartSize; a failed multipart upload is aborted. Saving over an
// existing object replaces it (last writer wins), as S3 does.
//
// A process that dies during a multipart upload leaves the upload, and the
// parts the provider bills for, in the bucket. RemoveLeftovers aborts the
// incomplete uploads of repository keys initiated before a given time; the
// commands that write (backup, prune) call it, never List, so that a
// read-only command (check) never changes the bucket. It needs
// s3:ListBucketMultipartUploads and s3:AbortMultipartUpload; a lifecycle
// rule that aborts incomplete uploads remains a good idea.
//
// Open checks the bucket with one listing request, because later HEAD
// requests (Stat) cannot tell a missing bucket from a missing object. S3
// deletes missing keys silently, so Remove looks the object up first to
// report ErrNotExist (two requests; not atomic against a concurrent Save).
package s3

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	s3api "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/custos-backup/custos/repository/backend"
)

// Defaults for the zero values of Options.
const (
	DefaultPartSize           = 8 << 20
	DefaultMultipartThreshold = 16 << 20
	DefaultMaxAttempts        = 6
	DefaultStallTimeout       = 2 * time.Minute
	DefaultRegion             = "us-east-1"
)

// Options configure a Backend. Bucket is required.
type Options struct {
	// Endpoint is the base URL of an S3-compatible server, e.g.
	// "http://127.0.0.1:9000". Empty means AWS.
	Endpoint string
	Bucket   string
	// Prefix is prepended to every key, with a "/"; leading and trailing
	// slashes are ignored. Empty means the top of the bucket.
	Prefix string
	// Region overrides the region from the AWS chain; if both are empty it
	// is DefaultRegion.
	Region string
	// UsePathStyle addresses the bucket as http://host/bucket rather than
	// http://bucket.host; most S3-compatible servers need it.
	UsePathStyle bool
	// Credentials overrides the standard AWS credential chain.
	Credentials aws.CredentialsProvider
	// Connections is how many requests the repository's readers keep in
	// flight on this backend at once (Backend.Connections). 0 means
	// DefaultConnections.
	Connections int

	// PartSize is the size of multipart upload parts (S3 requires at least
	// 5 MiB for all but the last part). 0 means DefaultPartSize.
	PartSize int64
	// MultipartThreshold: objects larger than this are uploaded in parts.
	// 0 means DefaultMultipartThreshold.
	MultipartThreshold int64

	// MaxAttempts bounds the requests one read of an object makes: a body
	// that breaks off is resumed at most MaxAttempts-1 times. Retrying
	// whole operations is repository/backend/retry's. 0 means
	// DefaultMaxAttempts.
	MaxAttempts int
	// StallTimeout: an attempt during which no bytes move for this long is
	// abandoned and retried. 0 means DefaultStallTimeout.
	StallTimeout time.Duration

	// ListPageSize is the number of keys (or incomplete multipart uploads)
	// asked for per listing request. 0 means the server's default (1000 on
	// AWS).
	ListPageSize int32

	// Archive is the storage class of packs and how archived ones are
	// restored (archive.go).
	Archive Archive

	// Logger receives warnings of resumed reads and of failed aborts, and
	// the clean-up of stale multipart uploads. nil means slog.Default().
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.PartSize <= 0 {
		o.PartSize = DefaultPartSize
	}
	if o.MultipartThreshold <= 0 {
		o.MultipartThreshold = DefaultMultipartThreshold
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = DefaultStallTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.Prefix = strings.Trim(o.Prefix, "/")
}

// Backend is a repository in an S3 bucket. It is safe for concurrent use.
type Backend struct {
	client    *s3api.Client
	transport *http.Transport
	opts      Options
	where     string // `s3 bucket "b" at http://host:port`, for errors
	location  string
	log       *slog.Logger
}

var _ backend.Backend = (*Backend)(nil)

// Open connects to the bucket and checks, with one listing request, that it
// exists and that the credentials may read it, so that such mistakes show up
// at once with a clear error.
func Open(ctx context.Context, opts Options) (*Backend, error) {
	b, err := newBackend(ctx, opts)
	if err != nil {
		return nil, err
	}
	if err := b.checkBucket(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// Create is Open for a new repository. The bucket must exist already: buckets
// carry region, policy and billing choices that are not custos's to make.
func Create(ctx context.Context, opts Options) (*Backend, error) {
	return Open(ctx, opts)
}

func newBackend(ctx context.Context, opts Options) (*Backend, error) {
	opts.setDefaults()
	if opts.Bucket == "" {
		return nil, errors.New("s3: no bucket given")
	}
	endpoint, err := cleanEndpoint(opts.Endpoint)
	if err != nil {
		return nil, err
	}
	opts.Endpoint = endpoint

	var loadOpts []func(*config.LoadOptions) error
	if opts.Region != "" {
		loadOpts = append(loadOpts, config.WithRegion(opts.Region))
	}
	if opts.Credentials != nil {
		loadOpts = append(loadOpts, config.WithCredentialsProvider(opts.Credentials))
	}
	// repository/backend/retry retries; the SDK tries each request once, or
	// the attempts would multiply.
	loadOpts = append(loadOpts, config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }))
	cfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("s3 bucket %q: load AWS configuration: %w", opts.Bucket, err)
	}
	if cfg.Region == "" {
		cfg.Region = DefaultRegion
	}
	// Our own transport, so that Close can drop its connections and so that
	// concurrent uploads keep theirs between requests. It starts from the
	// SDK's, which carries settings from the chain such as AWS_CA_BUNDLE.
	var transport *http.Transport
	if bc, ok := cfg.HTTPClient.(*awshttp.BuildableClient); ok {
		transport = bc.GetTransport()
	} else {
		transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	transport.MaxIdleConnsPerHost = 64
	cfg.HTTPClient = &http.Client{
		Transport: transport,
		// Like the SDK's client: a redirect is an answer, not a new target.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	opts.Region = cfg.Region
	client := s3api.NewFromConfig(cfg, func(o *s3api.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
		o.UsePathStyle = opts.UsePathStyle
		o.Retryer = aws.NopRetryer{}
		// S3-compatible servers often send no checksums; the SDK would log a
		// warning for every such response.
		o.DisableLogOutputChecksumValidationSkipped = true
		// Every object custos reads carries its own SHA-256, AEAD tag or
		// checksum, verified by the repository as it reads; the SDK's
		// CRC32 of each download would check the same bytes again (about
		// 2% of a check's CPU).
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		// Uploads are not hashed a second time for the signature
		// (UNSIGNED-PAYLOAD; see unsignedPayload).
		o.APIOptions = append(o.APIOptions, unsignedPayload)
	})

	shown := endpoint
	if shown == "" {
		shown = "https://s3." + opts.Region + ".amazonaws.com"
	}
	loc := "s3:" + shown + "/" + opts.Bucket
	if opts.Prefix != "" {
		loc += "/" + opts.Prefix
	}
	return &Backend{
		client:    client,
		transport: transport,
		opts:      opts,
		where:     fmt.Sprintf("s3 bucket %q at %s", opts.Bucket, shown),
		location:  loc,
		log:       opts.Logger,
	}, nil
}

// cleanEndpoint checks an endpoint URL and drops what must not be shown.
func cleanEndpoint(endpoint string) (string, error) {
	if endpoint == "" {
		return "", nil
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", fmt.Errorf("s3: endpoint %q: %w", endpoint, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("s3: endpoint %q: scheme must be http or https", endpoint)
	}
	if u.Host == "" {
		return "", fmt.Errorf("s3: endpoint %q: no host", endpoint)
	}
	if u.User != nil {
		return "", errors.New("s3: endpoint URL must not contain credentials; use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("s3: endpoint %q: must be scheme://host[:port] only", endpoint)
	}
	return u.Scheme + "://" + u.Host, nil
}

// Location returns "s3:<endpoint>/<bucket>[/<prefix>]".
func (b *Backend) Location() string { return b.location }

// Close releases idle connections.
func (b *Backend) Close() error {
	b.transport.CloseIdleConnections()
	return nil
}

// key returns the object key of h.
func (b *Backend) key(h backend.Handle) string {
	if b.opts.Prefix == "" {
		return h.Path()
	}
	return b.opts.Prefix + "/" + h.Path()
}

// typePrefix is the key prefix under which objects of type t live.
func (b *Backend) typePrefix(t backend.FileType) string {
	if b.opts.Prefix == "" {
		return string(t) + "/"
	}
	return b.opts.Prefix + "/" + string(t) + "/"
}

func (b *Backend) checkBucket(ctx context.Context) error {
	return b.request(ctx, "open", b.opts.Prefix, func(a *attempt) error {
		_, err := b.client.ListObjectsV2(a.ctx, &s3api.ListObjectsV2Input{
			Bucket:  aws.String(b.opts.Bucket),
			Prefix:  aws.String(b.typePrefix(backend.ConfigFile)),
			MaxKeys: aws.Int32(1),
		})
		return err
	})
}

func nameOf(h backend.Handle) string {
	if h.Type == backend.ConfigFile {
		return string(backend.ConfigFile)
	}
	return h.Name
}

// Stat returns the size of h.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	if err := h.Valid(); err != nil {
		return backend.FileInfo{}, fmt.Errorf("%s: stat: %w", b.where, err)
	}
	size, _, err := b.head(ctx, "stat", b.key(h))
	if err != nil {
		return backend.FileInfo{}, err
	}
	return backend.FileInfo{Name: nameOf(h), Size: size}, nil
}

// head returns the size and ETag of key.
func (b *Backend) head(ctx context.Context, op, key string) (size int64, etag string, err error) {
	err = b.request(ctx, op, key, func(a *attempt) error {
		out, err := b.client.HeadObject(a.ctx, &s3api.HeadObjectInput{
			Bucket: aws.String(b.opts.Bucket),
			Key:    aws.String(key),
		})
		if err != nil {
			return err
		}
		size = aws.ToInt64(out.ContentLength)
		etag = aws.ToString(out.ETag)
		return nil
	})
	return size, etag, err
}

// Remove deletes h. S3 deletes missing keys without complaint, and so does
// Remove (the Backend contract allows it).
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	if err := h.Valid(); err != nil {
		return fmt.Errorf("%s: remove: %w", b.where, err)
	}
	key := b.key(h)
	// No HEAD first: a DELETE of a missing key succeeds, which the
	// Backend contract allows, and every removal (a backup's lock, each
	// pack prune frees) would pay a round trip more to tell.
	return b.request(ctx, "remove", key, func(a *attempt) error {
		_, err := b.client.DeleteObject(a.ctx, &s3api.DeleteObjectInput{
			Bucket: aws.String(b.opts.Bucket),
			Key:    aws.String(key),
		})
		return err
	})
}

// List reports the objects of type t, page by page. For ConfigFile it
// reports the config object, if there is one.
func (b *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	switch t {
	case backend.ConfigFile:
		fi, err := b.Stat(ctx, backend.Handle{Type: backend.ConfigFile})
		if errors.Is(err, backend.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		return fn(fi)
	case backend.PackFile,
		backend.KeyFile, backend.IndexFile, backend.SnapshotFile, backend.LockFile:
	default:
		return fmt.Errorf("%s: list: invalid object type %q", b.where, t)
	}
	prefix := b.typePrefix(t)
	var token *string
	for {
		var out *s3api.ListObjectsV2Output
		err := b.request(ctx, "list", prefix, func(a *attempt) error {
			var err error
			in := &s3api.ListObjectsV2Input{
				Bucket:            aws.String(b.opts.Bucket),
				Prefix:            aws.String(prefix),
				ContinuationToken: token,
			}
			if b.opts.ListPageSize > 0 {
				in.MaxKeys = aws.Int32(b.opts.ListPageSize)
			}
			out, err = b.client.ListObjectsV2(a.ctx, in)
			return err
		})
		if err != nil {
			return err
		}
		for _, obj := range out.Contents {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("%s: list %q: %w", b.where, prefix, err)
			}
			rest := strings.TrimPrefix(aws.ToString(obj.Key), prefix)
			name := rest
			if t == backend.PackFile {
				// data/<xx>/<name>; also packs with short names at data/<name>.
				dir, base, found := strings.Cut(rest, "/")
				if found {
					if strings.Contains(base, "/") || dir == "" {
						continue
					}
					name = base
				}
			}
			if name == "" || strings.Contains(name, "/") {
				continue // not ours: a folder marker or something nested
			}
			if err := fn(backend.FileInfo{Name: name, Size: aws.ToInt64(obj.Size)}); err != nil {
				return err
			}
		}
		if !aws.ToBool(out.IsTruncated) || out.NextContinuationToken == nil {
			return nil
		}
		token = out.NextContinuationToken
	}
}
