package local

import (
	"errors"
	"fmt"
	"os"
	"unsafe"
)

// directAlign is the alignment O_DIRECT needs for buffer addresses, file
// offsets and lengths. 4096 covers every logical block size in common use
// (512 and 4096 bytes).
const directAlign = 4096

// directBufSize is the buffer of one staged object. Each full buffer is one
// write(2), so it is large enough that the per-write latency of the device
// stays small next to the copy into the buffer.
const directBufSize = 2 << 20

// directWriter writes a new file sequentially, bypassing the page cache
// (O_DIRECT) where the file system allows it.
//
// Why: writing through the page cache costs a page allocation and a copy per
// 4 KiB, which on virtual machines whose free memory is handed back to the
// host is the most expensive part of a backup (more CPU than hashing); and
// the dirty pages of a repository push the hot data of everything else on
// the host (other tenants' files, databases) out of the cache, only to be
// written back later. A repository pack is not read again soon, so keeping
// it out of the cache costs nothing.
//
// Writes are collected in an aligned buffer and written out whole; the last
// partial block goes out with O_DIRECT switched off again. On file systems
// that refuse O_DIRECT (tmpfs, some FUSE mounts) the writer falls back to
// ordinary writes, so the result is the same bytes either way.
type directWriter struct {
	f      *os.File
	buf    []byte // aligned; len is how much is buffered
	direct bool
	free   chan []byte // where buf goes back
	err    error       // sticky
	done   bool        // Flush has run
}

// errFlushed is the error of a write after Flush.
var errFlushed = errors.New("write after flush")

// newDirectWriter takes over f (an empty file open for writing) and, when
// the file system allows it, switches it to O_DIRECT.
func newDirectWriter(f *os.File, free chan []byte) *directWriter {
	w := &directWriter{f: f, free: free}
	w.direct = setDirect(f, true) == nil
	if w.direct {
		select {
		case w.buf = <-free:
		default:
			w.buf = alignedBuf(directBufSize)
		}
		w.buf = w.buf[:0]
	}
	return w
}

// alignedBuf returns a buffer of capacity n whose first byte is aligned to
// directAlign. Go never moves heap memory, so the alignment holds.
func alignedBuf(n int) []byte {
	b := make([]byte, n+directAlign)
	off := 0
	if rem := int(uintptr(unsafe.Pointer(&b[0])) % directAlign); rem != 0 {
		off = directAlign - rem
	}
	return b[off : off : off+n]
}

func (w *directWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.done {
		return 0, errFlushed
	}
	if !w.direct {
		n, err := w.f.Write(p)
		w.err = err
		return n, err
	}
	written := 0
	for len(p) > 0 {
		n := copy(w.buf[len(w.buf):cap(w.buf)], p)
		w.buf = w.buf[:len(w.buf)+n]
		p = p[n:]
		written += n
		if len(w.buf) == cap(w.buf) {
			if err := w.flushAligned(); err != nil {
				w.err = err
				return written, err
			}
		}
	}
	return written, nil
}

// flushAligned writes the whole blocks of the buffer and keeps the rest.
func (w *directWriter) flushAligned() error {
	n := len(w.buf) / directAlign * directAlign
	if n == 0 {
		return nil
	}
	if _, err := w.f.Write(w.buf[:n]); err != nil {
		// Some file systems accept the flag but refuse the writes. Nothing
		// reached the file (an O_DIRECT write is aligned or rejected whole
		// at the first block), so switch to ordinary writes and go on.
		if !errors.Is(err, errDirectRefused) || w.fallback() != nil {
			return err
		}
		if _, err := w.f.Write(w.buf[:n]); err != nil {
			return err
		}
	}
	rest := copy(w.buf, w.buf[n:])
	w.buf = w.buf[:rest]
	return nil
}

// fallback switches the file back to ordinary writes.
func (w *directWriter) fallback() error {
	if err := setDirect(w.f, false); err != nil {
		return fmt.Errorf("switch off O_DIRECT: %w", err)
	}
	w.direct = false
	return nil
}

// Flush writes everything buffered and releases the buffer; the writer
// takes no more writes. The file is not synced. A writer that is done calls
// it so that its buffer serves the next object while this one waits for
// commit; commit calls it too.
func (w *directWriter) Flush() error {
	if w.done {
		return w.err
	}
	w.done = true
	if w.err != nil {
		w.release()
		return w.err
	}
	if w.direct {
		err := w.flushAligned()
		if err == nil && len(w.buf) > 0 {
			// The tail is shorter than a block: O_DIRECT cannot write it.
			if err = w.fallback(); err == nil {
				_, err = w.f.Write(w.buf)
			}
		}
		if err != nil {
			w.err = err
		}
	}
	w.release()
	return w.err
}

func (w *directWriter) release() {
	if w.buf == nil {
		return
	}
	select {
	case w.free <- w.buf[:0]:
	default:
	}
	w.buf = nil
}
