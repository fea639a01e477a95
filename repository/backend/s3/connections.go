package s3

// DefaultConnections is how many requests readers keep in flight on an S3
// backend by default. Each request waits a round trip before its first
// byte, so a bucket a few tens of milliseconds away is read at a fraction of
// its bandwidth one request at a time; 16 keeps a 30 ms link busy with
// packs of 16 MiB while the memory of readers, which stream, stays small.
const DefaultConnections = 16

// Connections returns Options.Connections, or DefaultConnections.
func (b *Backend) Connections() int {
	if b.opts.Connections > 0 {
		return b.opts.Connections
	}
	return DefaultConnections
}
