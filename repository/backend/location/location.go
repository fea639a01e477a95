// Package location turns a repository location string, as people write it in
// configuration and on the command line, into a backend.
//
// Forms:
//
//	/abs/path, ./rel/path, rel/path    a local directory
//	local:/abs/path                    a local directory
//	s3:http://host:port/bucket/prefix  an S3-compatible server (path-style)
//	s3:https://host/bucket             the prefix is optional
//
// An S3 backend comes wrapped in repository/backend/retry, so that its
// failed requests are retried with backoff before they are reported, and,
// when Options name a cache folder, in repository/backend/cache, so that
// its snapshot and index files and tree packs are fetched once. A local folder has no
// cache: it would only copy files from one disk to another.
//
// S3 credentials and region come from the standard AWS chain
// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, shared files); a URL
// with credentials in it is refused, so they never end up in logs.
package location

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/cache"
	"github.com/custos-backup/custos/repository/backend/local"
	"github.com/custos-backup/custos/repository/backend/retry"
	"github.com/custos-backup/custos/repository/backend/s3"
)

// Kind is the type of backend a location names.
type Kind string

// The kinds of location.
const (
	Local Kind = "local"
	S3    Kind = "s3"
)

// Location is a parsed repository location.
type Location struct {
	Kind Kind
	// Path is the directory of a Local location, as given (not made
	// absolute).
	Path string
	// Endpoint ("http(s)://host[:port]"), Bucket and Prefix (no leading or
	// trailing slash, may be empty) describe an S3 location.
	Endpoint, Bucket, Prefix string
}

// String returns the location in its canonical form.
func (l Location) String() string {
	switch l.Kind {
	case Local:
		return "local:" + l.Path
	case S3:
		s := "s3:" + l.Endpoint + "/" + l.Bucket
		if l.Prefix != "" {
			s += "/" + l.Prefix
		}
		return s
	}
	return "<invalid location>"
}

// Parse checks a location string and splits it into its parts.
func Parse(raw string) (Location, error) {
	if strings.TrimSpace(raw) == "" {
		return Location{}, fmt.Errorf("empty repository location")
	}
	scheme, rest, hasColon := strings.Cut(raw, ":")
	switch {
	case !hasColon, strings.HasPrefix(raw, "/"), strings.HasPrefix(raw, "."),
		len(scheme) == 1: // a Windows drive letter, C:\...
		return Location{Kind: Local, Path: raw}, nil
	case scheme == "local":
		if rest == "" {
			return Location{}, fmt.Errorf("repository location %q: no path after \"local:\"", raw)
		}
		return Location{Kind: Local, Path: rest}, nil
	case scheme == "s3":
		return parseS3(raw, rest)
	case strings.ContainsAny(scheme, `/\`):
		// A relative path with a colon further on, like "backups/a:b".
		return Location{Kind: Local, Path: raw}, nil
	}
	return Location{}, fmt.Errorf("repository location %q: unknown kind %q (want a path, local:/path or s3:http(s)://host/bucket/prefix; write ./%s for a folder with a colon in its name)",
		redact(raw), scheme, redact(raw))
}

func parseS3(raw, rest string) (Location, error) {
	const want = "want s3:http(s)://host[:port]/bucket[/prefix]"
	if strings.HasPrefix(rest, "//") {
		// s3://bucket/prefix, as the AWS CLI writes it: no endpoint.
		return Location{}, fmt.Errorf("repository location %q: no endpoint; %s, e.g. s3:https://s3.us-east-1.amazonaws.com%s", redact(raw), want, rest[1:])
	}
	u, err := url.Parse(rest)
	if err != nil {
		return Location{}, fmt.Errorf("repository location %q: %s", redact(raw), want)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return Location{}, fmt.Errorf("repository location %q: endpoint scheme must be http or https; %s", redact(raw), want)
	case u.User != nil:
		return Location{}, fmt.Errorf("repository location %q: credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", redact(raw))
	case u.Host == "":
		return Location{}, fmt.Errorf("repository location %q: no host; %s", redact(raw), want)
	case u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(rest, "?"):
		return Location{}, fmt.Errorf("repository location %q: query and fragment are not supported; %s", redact(raw), want)
	}
	path := strings.Trim(u.Path, "/")
	bucket, prefix, _ := strings.Cut(path, "/")
	if bucket == "" {
		return Location{}, fmt.Errorf("repository location %q: no bucket; %s", redact(raw), want)
	}
	for _, seg := range strings.Split(prefix, "/") {
		if prefix != "" && (seg == "" || seg == "." || seg == "..") {
			return Location{}, fmt.Errorf("repository location %q: prefix %q has an empty, \".\" or \"..\" element", redact(raw), prefix)
		}
	}
	return Location{Kind: S3, Endpoint: u.Scheme + "://" + u.Host, Bucket: bucket, Prefix: prefix}, nil
}

// redact hides any user information (a password, or an access key and
// secret) someone put in a URL, so that error messages can quote the
// location. It works on text, because such a URL may not even parse.
func redact(raw string) string {
	i := strings.Index(raw, "://")
	if i < 0 {
		return raw
	}
	rest := raw[i+3:]
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	if at := strings.LastIndex(rest[:end], "@"); at >= 0 {
		return raw[:i+3] + "xxxxx@" + rest[at+1:]
	}
	return raw
}

// Options are how a location is opened.
type Options struct {
	// CacheDir is the folder under which a remote repository's snapshot
	// and index files are kept (a folder per location); empty: none.
	CacheDir string
}

// Open returns the backend of an existing repository location. For a local
// directory it must exist; for S3 the bucket must exist and be readable with
// the credentials from the AWS chain.
func Open(ctx context.Context, raw string, opts Options) (backend.Backend, error) {
	l, err := Parse(raw)
	if err != nil {
		return nil, err
	}
	switch l.Kind {
	case Local:
		return local.Open(ctx, l.Path)
	default:
		return openS3(ctx, "open", l, s3.Open, opts)
	}
}

// Create prepares a location for a new repository: it makes the local
// directory and its layout, or checks that the S3 bucket exists and is
// accessible (buckets are not created).
func Create(ctx context.Context, raw string, opts Options) (backend.Backend, error) {
	l, err := Parse(raw)
	if err != nil {
		return nil, err
	}
	switch l.Kind {
	case Local:
		return local.Create(ctx, l.Path)
	default:
		return openS3(ctx, "create", l, s3.Create, opts)
	}
}

// openS3 opens an S3 location, retrying the bucket check as any request,
// and wraps the backend in the retries of repository/backend/retry (the S3
// backend tries each request once) and in the cache of opts.
func openS3(ctx context.Context, op string, l Location, open func(context.Context, s3.Options) (*s3.Backend, error), opts Options) (backend.Backend, error) {
	var be *s3.Backend
	err := retry.NewRetrier(retry.Options{}).Do(ctx, op+" "+l.String(), func(int) error {
		var err error
		be, err = open(ctx, l.s3Options())
		return err
	})
	if err != nil {
		return nil, err
	}
	rb := retry.New(be, retry.Options{})
	if opts.CacheDir == "" {
		return rb, nil
	}
	cb, err := cache.New(rb, opts.CacheDir)
	if err != nil {
		_ = rb.Close()
		return nil, err
	}
	return cb, nil
}

func (l Location) s3Options() s3.Options {
	return s3.Options{
		Endpoint:     l.Endpoint,
		Bucket:       l.Bucket,
		Prefix:       l.Prefix,
		UsePathStyle: true, // the bucket is in the URL path
	}
}
