package format

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/scrypt"
)

const (
	KdfScrypt   = "scrypt"
	KdfArgon2id = "argon2id"
	saltSize    = 32
)

// KdfParams are the cost parameters of a key derivation.
type KdfParams struct {
	// scrypt
	N int `json:"n,omitempty"`
	R int `json:"r,omitempty"`
	P int `json:"p,omitempty"`
	// argon2id
	Time      uint32 `json:"time,omitempty"`
	MemoryKiB uint32 `json:"memory_kib,omitempty"`
	Threads   uint8  `json:"threads,omitempty"`
}

// Default costs: 32 MiB, so that opening a repository does not dominate
// the agent's peak memory. argon2id is the default for new keys: with the
// same memory it takes about 0.1 s on two cores, as its lanes run in
// parallel, where x/crypto's scrypt runs its p lanes one after the other
// (0.3 s for p=3). Every command pays it once.
var (
	DefaultScrypt   = KdfParams{N: 1 << 15, R: 8, P: 3}
	DefaultArgon2id = KdfParams{Time: 3, MemoryKiB: 32 << 10, Threads: 2}
)

// ErrWrongPassword is returned when no key file opens with the password.
var ErrWrongPassword = errors.New("wrong password or no matching key")

// KeyFile is an object in keys/: the master key wrapped by a key derived
// from a password.
type keyFile struct {
	Version  int       `json:"version"`
	Created  time.Time `json:"created"`
	Hostname string    `json:"hostname,omitempty"`
	KDF      string    `json:"kdf"`
	Params   KdfParams `json:"params"`
	Salt     []byte    `json:"salt"`
	// Data is the master key (32 bytes) sealed with AES-256-GCM under the
	// derived key.
	Data []byte `json:"data"`
}

// Validate bounds the parameters, so that a hostile key file cannot make
// Open burn unbounded memory or time.
func (k *keyFile) validate() error {
	if k.Version != Version {
		return fmt.Errorf("unsupported key version %d", k.Version)
	}
	p := k.Params
	switch k.KDF {
	case KdfScrypt:
		if p.N < 1<<10 || p.N > 1<<20 || p.N&(p.N-1) != 0 {
			return fmt.Errorf("scrypt N=%d out of range", p.N)
		}
		if p.R < 1 || p.R > 32 || p.P < 1 || p.P > 16 || int64(128)*int64(p.N)*int64(p.R) > 1<<30 {
			return fmt.Errorf("scrypt r=%d p=%d out of range", p.R, p.P)
		}
	case KdfArgon2id:
		if p.Time < 1 || p.Time > 20 || p.MemoryKiB < 8<<10 || p.MemoryKiB > 4<<20 || p.Threads < 1 {
			return fmt.Errorf("argon2id time=%d memory=%dKiB threads=%d out of range", p.Time, p.MemoryKiB, p.Threads)
		}
	default:
		return fmt.Errorf("unknown kdf %q", k.KDF)
	}
	if len(k.Salt) < 16 || len(k.Salt) > 64 {
		return fmt.Errorf("salt of %d bytes", len(k.Salt))
	}
	if len(k.Data) != NonceSize+KeySize+TagSize {
		return fmt.Errorf("wrapped key of %d bytes", len(k.Data))
	}
	return nil
}

func DecodeKeyFile(b []byte) (*keyFile, error) {
	var k keyFile
	if err := StrictUnmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("decode key file: %w", err)
	}
	if err := k.validate(); err != nil {
		return nil, fmt.Errorf("decode key file: %w", err)
	}
	return &k, nil
}

func deriveKey(kdf string, p KdfParams, password, salt []byte) ([]byte, error) {
	// The KDF's tens of MiB are garbage as soon as it returns. Collecting
	// them now lets the backup that usually follows reuse those pages;
	// otherwise they would still be counted in the heap when its buffers
	// are allocated, and the process's peak memory would include both.
	defer runtime.GC()
	switch kdf {
	case KdfScrypt:
		return scrypt.Key(password, salt, p.N, p.R, p.P, KeySize)
	case KdfArgon2id:
		return argon2.IDKey(password, salt, p.Time, p.MemoryKiB, p.Threads, KeySize), nil
	}
	return nil, fmt.Errorf("unknown kdf %q", kdf)
}

// NewKeyFile wraps master with a key derived from password.
func NewKeyFile(kdf string, p KdfParams, password, master []byte) ([]byte, error) {
	k := keyFile{Version: Version, Created: time.Now().UTC().Truncate(time.Second), KDF: kdf, Params: p, Salt: make([]byte, saltSize)}
	k.Hostname, _ = os.Hostname()
	if _, err := rand.Read(k.Salt); err != nil {
		return nil, err
	}
	// Bound the parameters before deriving, as readers do: a KDF given
	// another's parameters would panic or run away.
	k.Data = make([]byte, NonceSize+KeySize+TagSize)
	if err := k.validate(); err != nil {
		return nil, err
	}
	kek, err := deriveKey(kdf, p, password, k.Salt)
	if err != nil {
		return nil, fmt.Errorf("derive key: %w", err)
	}
	s, err := NewSealer(kek)
	if err != nil {
		return nil, err
	}
	k.Data = s.Seal(nil, master)
	if err := k.validate(); err != nil {
		return nil, err
	}
	return json.MarshalIndent(&k, "", "  ")
}

// UnwrapMasterKey returns the master key if password is right.
func (k *keyFile) UnwrapMasterKey(password []byte) ([]byte, error) {
	kek, err := deriveKey(k.KDF, k.Params, password, k.Salt)
	if err != nil {
		return nil, err
	}
	s, err := NewSealer(kek)
	if err != nil {
		return nil, err
	}
	master, err := s.Open(nil, k.Data)
	if err != nil {
		return nil, ErrWrongPassword
	}
	if len(master) != KeySize {
		return nil, fmt.Errorf("unwrapped key has %d bytes", len(master))
	}
	return master, nil
}
