package s3

import "time"

// SetStaleUploadAge replaces the age beyond which List aborts incomplete
// multipart uploads, so that tests need not wait a day. Call it before the
// backend is used.
func (b *Backend) SetStaleUploadAge(d time.Duration) { b.staleAge = d }
