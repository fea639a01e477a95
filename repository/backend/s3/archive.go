package s3

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3api "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/retry"
)

// Archive says in which storage class packs are written and how an
// archived pack is brought back for reading. Only packs take the class:
// config, keys, index and snapshots stay in STANDARD, so that the
// repository opens and lists without a restore.
type Archive struct {
	// StorageClass of new packs, e.g. GLACIER or DEEP_ARCHIVE; "" is the
	// bucket's default (STANDARD).
	StorageClass string
	// RestoreTier is Expedited, Standard or Bulk; "" means Standard.
	RestoreTier string
	// RestoreDays is how long a restored copy stays readable; 0 means
	// DefaultRestoreDays.
	RestoreDays int32
}

// DefaultRestoreDays is how long a restored pack stays readable unless
// told otherwise: the fixity run that reads it is the next one after the
// restore is done, which for a weekly schedule is up to a week later.
const DefaultRestoreDays = 7

// storageClasses are the classes an Archive may name.
var storageClasses = []string{"STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"}

// archivedClasses need a restore before a read.
var archivedClasses = []string{"GLACIER", "DEEP_ARCHIVE"}

var restoreTiers = []string{"Expedited", "Standard", "Bulk"}

// Check reports the first invalid setting of a, by its configuration name.
func (a Archive) Check() (field string, err error) {
	if a.StorageClass != "" && !slices.Contains(storageClasses, a.StorageClass) {
		return "storage_class", fmt.Errorf("unknown storage class %q (one of %v)", a.StorageClass, storageClasses)
	}
	if a.RestoreTier != "" {
		if !slices.Contains(restoreTiers, a.RestoreTier) {
			return "restore_tier", fmt.Errorf("unknown restore tier %q (one of %v)", a.RestoreTier, restoreTiers)
		}
		if !IsArchived(a.StorageClass) {
			return "restore_tier", fmt.Errorf("restore_tier needs an archive storage_class (GLACIER or DEEP_ARCHIVE), not %q", a.StorageClass)
		}
		if a.StorageClass == "DEEP_ARCHIVE" && a.RestoreTier == "Expedited" {
			return "restore_tier", errors.New("DEEP_ARCHIVE has no Expedited restores (Standard or Bulk)")
		}
	}
	if a.RestoreDays < 0 {
		return "restore_days", fmt.Errorf("restore_days must be 1 or more, not %d", a.RestoreDays)
	}
	if a.RestoreDays > 0 && !IsArchived(a.StorageClass) {
		return "restore_days", fmt.Errorf("restore_days needs an archive storage_class (GLACIER or DEEP_ARCHIVE), not %q", a.StorageClass)
	}
	return "", nil
}

// IsArchived reports whether objects of class need a restore to be read.
func IsArchived(class string) bool { return slices.Contains(archivedClasses, class) }

// SetArchive sets how packs are stored from now on. Call it before the
// backend is used.
func (b *Backend) SetArchive(a Archive) error {
	if field, err := a.Check(); err != nil {
		return fmt.Errorf("%s: %s: %w", b.where, field, err)
	}
	b.opts.Archive = a
	return nil
}

// storageClass is the class an object of h is written in.
func (b *Backend) storageClass(h backend.Handle) types.StorageClass {
	if h.Type != backend.PackFile {
		return ""
	}
	return types.StorageClass(b.opts.Archive.StorageClass)
}

var _ backend.Archiver = (*Backend)(nil)

// ArchiveState reads h's storage class and restore status with one HEAD.
func (b *Backend) ArchiveState(ctx context.Context, h backend.Handle) (backend.ArchiveState, error) {
	if err := h.Valid(); err != nil {
		return backend.ArchiveState{}, fmt.Errorf("%s: archive state: %w", b.where, err)
	}
	var st backend.ArchiveState
	// Archiver calls bypass the retry wrapper (AsArchiver unwraps it), so
	// they retry here, through the same loop.
	err := retry.NewRetrier(retry.Options{Logger: b.log}).Do(ctx, "archive state "+b.key(h), func(int) error {
		return b.request(ctx, "archive state", b.key(h), func(a *attempt) error {
			out, err := b.client.HeadObject(a.ctx, &s3api.HeadObjectInput{Bucket: aws.String(b.opts.Bucket), Key: aws.String(b.key(h))})
			if err != nil {
				return err
			}
			st = archiveState(string(out.StorageClass), aws.ToString(out.Restore))
			return nil
		})
	})
	return st, err
}

// restoreHeader is S3's x-amz-restore: `ongoing-request="true"`, or
// `ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"`.
var restoreHeader = regexp.MustCompile(`ongoing-request="(true|false)"(?:,\s*expiry-date="([^"]*)")?`)

func archiveState(class, restore string) backend.ArchiveState {
	st := backend.ArchiveState{StorageClass: class, Archived: IsArchived(class)}
	m := restoreHeader.FindStringSubmatch(restore)
	switch {
	case m == nil:
	case m[1] == "true":
		st.Restore = backend.RestoreOngoing
	default:
		st.Restore = backend.RestoreDone
		st.Expiry, _ = http.ParseTime(m[2])
	}
	return st
}

// RequestRestore asks S3 for a readable copy of archived h in the
// configured tier. A restore already under way answers 409
// RestoreAlreadyInProgress, which is what was wanted.
func (b *Backend) RequestRestore(ctx context.Context, h backend.Handle) error {
	if err := h.Valid(); err != nil {
		return fmt.Errorf("%s: restore request: %w", b.where, err)
	}
	tier := types.Tier(b.opts.Archive.RestoreTier)
	if tier == "" {
		tier = types.TierStandard
	}
	days := b.opts.Archive.RestoreDays
	if days <= 0 {
		days = DefaultRestoreDays
	}
	return retry.NewRetrier(retry.Options{Logger: b.log}).Do(ctx, "restore request "+b.key(h), func(int) error {
		return b.request(ctx, "restore request", b.key(h), func(a *attempt) error {
			_, err := b.client.RestoreObject(a.ctx, &s3api.RestoreObjectInput{
				Bucket: aws.String(b.opts.Bucket),
				Key:    aws.String(b.key(h)),
				RestoreRequest: &types.RestoreRequest{
					Days:                 aws.Int32(days),
					GlacierJobParameters: &types.GlacierJobParameters{Tier: tier},
				},
			})
			var api smithy.APIError
			if errors.As(err, &api) {
				switch api.ErrorCode() {
				case "RestoreAlreadyInProgress":
					return nil
				case "NotImplemented":
					// A server without archive classes (versitygw's posix
					// backend) answers 501: asking again cannot help.
					return permanent{fmt.Errorf("the server does not implement RestoreObject: %w", err)}
				}
			}
			return err
		})
	})
}
