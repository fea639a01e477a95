package s3

import (
	"context"

	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

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

// unsignedPayload signs requests sent over plain HTTP without a SHA-256 of
// their body (UNSIGNED-PAYLOAD), as the SDK does over https by itself.
// Otherwise the SDK hashes every upload for the signature: a second pass
// over every pack byte that costs a backup or copy about as much CPU as
// hashing the pack itself. The body stays covered: the SDK still sends its
// CRC32 checksum, which the server verifies, and every object custos reads
// back is verified against its SHA-256 name and AEAD tags anyway.
//
// It runs first in the finalize step, so that both the checksum step and
// the payload hash step find the hash decided.
func unsignedPayload(stack *middleware.Stack) error {
	return stack.Finalize.Add(middleware.FinalizeMiddlewareFunc("custosUnsignedPayload",
		func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
			if req, ok := in.Request.(*smithyhttp.Request); ok && !req.IsHTTPS() && v4.GetPayloadHash(ctx) == "" {
				ctx = v4.SetPayloadHash(ctx, "UNSIGNED-PAYLOAD")
			}
			return next.HandleFinalize(ctx, in)
		}), middleware.Before)
}
