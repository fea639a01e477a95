package bagit

// SyncEachFile makes b's Commit sync file by file, as where syncfs fails.
func SyncEachFile(b *Bag) { b.perFileSync = true }
