package local

// SetSyncDir replaces the directory fsync so tests can observe it.
func (b *Backend) SetSyncDir(fn func(dir string) error) { b.syncDir = fn }

// SyncDir is the real directory fsync.
var SyncDir = syncDir
