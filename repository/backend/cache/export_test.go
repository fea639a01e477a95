package cache

// SetMaxCopy lowers the size above which objects are passed on, not copied.
func SetMaxCopy(b *Backend, n int) { b.maxCopy = n }

// SetMaxPackCopy lowers the size above which marked packs are read by
// ranges.
func SetMaxPackCopy(b *Backend, n int) { b.maxPackCopy = n }
