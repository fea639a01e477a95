package repository

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
)

const (
	keySize   = 32 // AES-256
	nonceSize = 12 // GCM standard nonce
	tagSize   = 16 // GCM tag; also the length of the checksum of unencrypted objects
)

// errAuth is wrapped by every failure to verify a sealed object.
var errAuth = errors.New("authentication failed (data damaged or wrong key)")

// sealer encrypts and authenticates (AES-256-GCM with a random nonce) or, in
// an unencrypted repository, only checksums (truncated SHA-256) the objects a
// repository stores. Both forms give every stored byte an integrity check.
type sealer struct {
	aead cipher.AEAD // nil: unencrypted
}

func newSealer(key []byte) (*sealer, error) {
	if key == nil {
		return &sealer{}, nil
	}
	if len(key) != keySize {
		return nil, fmt.Errorf("master key has %d bytes, want %d", len(key), keySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("aes: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("gcm: %w", err)
	}
	return &sealer{aead: aead}, nil
}

func (s *sealer) encrypted() bool { return s.aead != nil }

// overhead is how many bytes seal adds.
func (s *sealer) overhead() int {
	if s.aead != nil {
		return nonceSize + tagSize
	}
	return tagSize
}

// headroom is how many bytes seal needs in front of the plaintext for sealInPlace.
func (s *sealer) headroom() int {
	if s.aead != nil {
		return nonceSize
	}
	return 0
}

// seal appends the sealed form of plaintext to dst. dst and plaintext must
// not overlap.
func (s *sealer) seal(dst, plaintext []byte) []byte {
	if s.aead == nil {
		dst = append(dst, plaintext...)
		sum := sha256.Sum256(plaintext)
		return append(dst, sum[:tagSize]...)
	}
	var nonce [nonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		// crypto/rand never fails on supported platforms (it crashes instead).
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	dst = append(dst, nonce[:]...)
	return s.aead.Seal(dst, nonce[:], plaintext, nil)
}

// sealInPlace seals buf[headroom:], which must have tagSize spare capacity,
// without copying, and returns the sealed bytes (a prefix of buf's array).
func (s *sealer) sealInPlace(buf []byte) []byte {
	h := s.headroom()
	pt := buf[h:]
	if s.aead == nil {
		sum := sha256.Sum256(pt)
		return append(buf, sum[:tagSize]...)
	}
	nonce := buf[:nonceSize]
	if _, err := rand.Read(nonce); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return s.aead.Seal(buf[:nonceSize], nonce, pt, nil)
}

// open verifies sealed and appends its plaintext to dst. dst may be
// sealed[:0] to decrypt in place.
func (s *sealer) open(dst, sealed []byte) ([]byte, error) {
	if len(sealed) < s.overhead() {
		return nil, fmt.Errorf("sealed object of %d bytes is shorter than its %d-byte overhead: %w", len(sealed), s.overhead(), errAuth)
	}
	if s.aead == nil {
		pt := sealed[:len(sealed)-tagSize]
		sum := sha256.Sum256(pt)
		if subtle.ConstantTimeCompare(sum[:tagSize], sealed[len(pt):]) != 1 {
			return nil, fmt.Errorf("checksum mismatch: %w", errAuth)
		}
		return append(dst, pt...), nil
	}
	out, err := s.aead.Open(dst, sealed[:nonceSize], sealed[nonceSize:], nil)
	if err != nil {
		return nil, errAuth
	}
	return out, nil
}

// openInPlace verifies sealed and returns its plaintext, reusing sealed's memory.
func (s *sealer) openInPlace(sealed []byte) ([]byte, error) {
	if s.aead == nil {
		if len(sealed) < tagSize {
			return nil, fmt.Errorf("sealed object of %d bytes is too short: %w", len(sealed), errAuth)
		}
		pt := sealed[:len(sealed)-tagSize]
		sum := sha256.Sum256(pt)
		if subtle.ConstantTimeCompare(sum[:tagSize], sealed[len(pt):]) != 1 {
			return nil, fmt.Errorf("checksum mismatch: %w", errAuth)
		}
		return pt, nil
	}
	if len(sealed) < nonceSize+tagSize {
		return nil, fmt.Errorf("sealed object of %d bytes is too short: %w", len(sealed), errAuth)
	}
	out, err := s.aead.Open(sealed[nonceSize:nonceSize], sealed[:nonceSize], sealed[nonceSize:], nil)
	if err != nil {
		return nil, errAuth
	}
	return out, nil
}
