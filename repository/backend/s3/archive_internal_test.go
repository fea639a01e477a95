package s3

import (
	"testing"
	"time"

	"github.com/custos-backup/custos/repository/backend"
)

// TestArchiveStateHeader reads S3's x-amz-restore header as AWS documents
// it; versitygw never sends one, so only this test covers it.
func TestArchiveStateHeader(t *testing.T) {
	expiry := time.Date(2012, 12, 21, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		class, header string
		want          backend.ArchiveState
		readable      bool
	}{
		{"", "", backend.ArchiveState{}, true},
		{"STANDARD", "", backend.ArchiveState{StorageClass: "STANDARD"}, true},
		{"GLACIER_IR", "", backend.ArchiveState{StorageClass: "GLACIER_IR"}, true},
		{"GLACIER", "", backend.ArchiveState{StorageClass: "GLACIER", Archived: true}, false},
		{"DEEP_ARCHIVE", `ongoing-request="true"`, backend.ArchiveState{StorageClass: "DEEP_ARCHIVE", Archived: true, Restore: backend.RestoreOngoing}, false},
		{"GLACIER", `ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"`,
			backend.ArchiveState{StorageClass: "GLACIER", Archived: true, Restore: backend.RestoreDone, Expiry: expiry}, true},
		{"GLACIER", `garbage`, backend.ArchiveState{StorageClass: "GLACIER", Archived: true}, false},
	} {
		got := archiveState(tc.class, tc.header)
		if !got.Expiry.Equal(tc.want.Expiry) || got.StorageClass != tc.want.StorageClass || got.Archived != tc.want.Archived || got.Restore != tc.want.Restore || got.Readable() != tc.readable {
			t.Errorf("%s %q: %+v (readable %v), want %+v (readable %v)", tc.class, tc.header, got, got.Readable(), tc.want, tc.readable)
		}
	}
}
