package format

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
	KeySize   = 32 // AES-256
	NonceSize = 12 // GCM standard nonce
	TagSize   = 16 // GCM tag; also the length of the checksum of unencrypted objects
)

// ErrAuth is wrapped by every failure to verify a sealed object.
var errAuth = errors.New("authentication failed (data damaged or wrong key)")

// Sealer encrypts and authenticates (AES-256-GCM with a random nonce) or, in
// an unencrypted repository, only checksums (truncated SHA-256) the objects a
// repository stores. Both forms give every stored byte an integrity check.
type Sealer struct {
	aead cipher.AEAD // nil: unencrypted
}

func NewSealer(key []byte) (*Sealer, error) {
	if key == nil {
		return &Sealer{}, nil
	}
	if len(key) != KeySize {
		return nil, fmt.Errorf("master key has %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("aes: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("gcm: %w", err)
	}
	return &Sealer{aead: aead}, nil
}

func (s *Sealer) Encrypted() bool { return s.aead != nil }

// Overhead is how many bytes seal adds.
func (s *Sealer) Overhead() int {
	if s.aead != nil {
		return NonceSize + TagSize
	}
	return TagSize
}

// Headroom is how many bytes seal needs in front of the plaintext for sealInPlace.
func (s *Sealer) Headroom() int {
	if s.aead != nil {
		return NonceSize
	}
	return 0
}

// Seal appends the sealed form of plaintext to dst. dst and plaintext must
// not overlap.
func (s *Sealer) Seal(dst, plaintext []byte) []byte {
	if s.aead == nil {
		dst = append(dst, plaintext...)
		sum := sha256.Sum256(plaintext)
		return append(dst, sum[:TagSize]...)
	}
	var nonce [NonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		// crypto/rand never fails on supported platforms (it crashes instead).
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	dst = append(dst, nonce[:]...)
	return s.aead.Seal(dst, nonce[:], plaintext, nil)
}

// SealInPlace seals buf[headroom:], which must have tagSize spare capacity,
// without copying, and returns the sealed bytes (a prefix of buf's array).
func (s *Sealer) SealInPlace(buf []byte) []byte {
	h := s.Headroom()
	pt := buf[h:]
	if s.aead == nil {
		sum := sha256.Sum256(pt)
		return append(buf, sum[:TagSize]...)
	}
	nonce := buf[:NonceSize]
	if _, err := rand.Read(nonce); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return s.aead.Seal(buf[:NonceSize], nonce, pt, nil)
}

// Open verifies sealed and appends its plaintext to dst. dst may be
// sealed[:0] to decrypt in place.
func (s *Sealer) Open(dst, sealed []byte) ([]byte, error) {
	if len(sealed) < s.Overhead() {
		return nil, fmt.Errorf("sealed object of %d bytes is shorter than its %d-byte overhead: %w", len(sealed), s.Overhead(), errAuth)
	}
	if s.aead == nil {
		pt := sealed[:len(sealed)-TagSize]
		sum := sha256.Sum256(pt)
		if subtle.ConstantTimeCompare(sum[:TagSize], sealed[len(pt):]) != 1 {
			return nil, fmt.Errorf("checksum mismatch: %w", errAuth)
		}
		return append(dst, pt...), nil
	}
	out, err := s.aead.Open(dst, sealed[:NonceSize], sealed[NonceSize:], nil)
	if err != nil {
		return nil, errAuth
	}
	return out, nil
}

// OpenInPlace verifies sealed and returns its plaintext, reusing sealed's memory.
func (s *Sealer) OpenInPlace(sealed []byte) ([]byte, error) {
	if s.aead == nil {
		if len(sealed) < TagSize {
			return nil, fmt.Errorf("sealed object of %d bytes is too short: %w", len(sealed), errAuth)
		}
		pt := sealed[:len(sealed)-TagSize]
		sum := sha256.Sum256(pt)
		if subtle.ConstantTimeCompare(sum[:TagSize], sealed[len(pt):]) != 1 {
			return nil, fmt.Errorf("checksum mismatch: %w", errAuth)
		}
		return pt, nil
	}
	if len(sealed) < NonceSize+TagSize {
		return nil, fmt.Errorf("sealed object of %d bytes is too short: %w", len(sealed), errAuth)
	}
	out, err := s.aead.Open(sealed[NonceSize:NonceSize], sealed[:NonceSize], sealed[NonceSize:], nil)
	if err != nil {
		return nil, errAuth
	}
	return out, nil
}
