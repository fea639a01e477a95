package cache

// SetMaxCopy lowers the size above which objects are passed on, not copied.
func SetMaxCopy(b *Backend, n int) { b.maxCopy = n }
