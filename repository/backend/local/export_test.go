package local

import "os"

// SetSyncDir replaces the directory fsync so tests can observe it.
func (b *Backend) SetSyncDir(fn func(dir string) error) { b.syncDir = fn }

// SyncDir is the real directory fsync.
var SyncDir = syncDir

// SetSyncFile replaces the file fsync so tests can observe it.
func (b *Backend) SetSyncFile(fn func(f *os.File) error) { b.syncFile = fn }
