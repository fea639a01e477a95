package format

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/custos-backup/custos/repository/cdc"
	"github.com/restic/chunker"
)

// Version is the repository format this code writes and reads.
const Version = 1

const (
	formatName       = "custos-repository"
	CompressionZstd  = "zstd"
	compressionNone  = "none"
	cipherAESGCM     = "aes-256-gcm"
	cipherNone       = "none"
	ChunkerGear      = "gear"
	ChunkerRabin     = "rabin"
	defaultPackSize  = 16 << 20
	MinPackSize      = 1 << 20
	maxPackSize      = 1 << 30
	MaxConfigSize    = 64 << 10
	MaxKeyFileSize   = 64 << 10
	MaxSnapshotSize  = 16 << 20
	MaxIndexFileSize = 1 << 30
)

// ConfigFile is the "config" object. The outer part is plain JSON so that a
// reader can tell an encrypted repository from an unencrypted one before it
// has a key; the inner part (chunker polynomial etc.) is sealed with the
// master key when the repository is encrypted.
type ConfigFile struct {
	Format    string `json:"format"`
	Version   int    `json:"version"`
	ID        string `json:"id"`
	Encrypted bool   `json:"encrypted"`
	// Sealed is the sealed JSON of repoConfig (encrypted repositories).
	Sealed []byte `json:"sealed,omitempty"`
	// Config is repoConfig in the clear (unencrypted repositories).
	Config *Config `json:"config,omitempty"`
}

// Config is the inner configuration.
type Config struct {
	Version int       `json:"version"`
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	// Chunker is "gear" (FastCDC's gear hash, keyed by ChunkerSeed) or
	// "rabin" (restic's Rabin fingerprint with Polynomial). Absent means
	// rabin: repositories made before gear existed.
	Chunker     string `json:"chunker,omitempty"`
	ChunkerSeed string `json:"chunker_seed,omitempty"`       // hex, 32 bytes
	Polynomial  string `json:"chunker_polynomial,omitempty"` // hex
	MinChunk    uint   `json:"chunk_min"`
	MaxChunk    uint   `json:"chunk_max"`
	// AvgBits sets the average chunk size: about chunk_min plus 2^AvgBits
	// bytes (FORMAT.md §5 gives each chunker's cut condition). 0
	// (repositories made before it existed) means 20.
	AvgBits     int    `json:"chunk_avg_bits,omitempty"`
	Compression string `json:"compression"` // "zstd" or "none"
	PackSize    int64  `json:"pack_size"`
	Cipher      string `json:"cipher"` // "aes-256-gcm" or "none"

	pol  chunker.Pol
	gear *cdc.Table
}

// Validate checks every field, so that later code can trust the config.
func (c *Config) Validate() error {
	if c.Version != Version {
		return fmt.Errorf("unsupported format version %d", c.Version)
	}
	if len(c.ID) != 64 {
		return fmt.Errorf("invalid repository id %q", c.ID)
	}
	if _, err := hex.DecodeString(c.ID); err != nil {
		return fmt.Errorf("invalid repository id %q", c.ID)
	}
	switch c.Chunker {
	case "", ChunkerRabin:
		if c.ChunkerSeed != "" {
			return errors.New("chunker_seed is set for the rabin chunker")
		}
		p, err := strconv.ParseUint(c.Polynomial, 16, 64)
		if err != nil {
			return fmt.Errorf("invalid chunker polynomial %q", c.Polynomial)
		}
		c.pol = chunker.Pol(p)
		if !c.pol.Irreducible() || c.pol.Deg() != 53 {
			return fmt.Errorf("chunker polynomial %q is not an irreducible polynomial of degree 53", c.Polynomial)
		}
	case ChunkerGear:
		if c.Polynomial != "" {
			return errors.New("chunker_polynomial is set for the gear chunker")
		}
		seed, err := hex.DecodeString(c.ChunkerSeed)
		if err != nil || len(seed) != 32 {
			return fmt.Errorf("invalid chunker seed %q (want 64 hex digits)", c.ChunkerSeed)
		}
		c.gear = cdc.NewTable(seed)
	default:
		return fmt.Errorf("unknown chunker %q", c.Chunker)
	}
	if c.MinChunk < 64<<10 || c.MaxChunk > 64<<20 || c.MinChunk >= c.MaxChunk {
		return fmt.Errorf("invalid chunk size bounds %d..%d", c.MinChunk, c.MaxChunk)
	}
	if c.AvgBits != 0 && (c.AvgBits < 16 || c.AvgBits > 24) {
		return fmt.Errorf("invalid chunk_avg_bits %d (want 16 to 24)", c.AvgBits)
	}
	switch c.Compression {
	case CompressionZstd, compressionNone:
	default:
		return fmt.Errorf("unknown compression %q", c.Compression)
	}
	if c.PackSize < MinPackSize || c.PackSize > maxPackSize {
		return fmt.Errorf("pack size %d out of range [%d, %d]", c.PackSize, MinPackSize, maxPackSize)
	}
	switch c.Cipher {
	case cipherAESGCM, cipherNone:
	default:
		return fmt.Errorf("unknown cipher %q", c.Cipher)
	}
	return nil
}

// NewRepoConfig returns the config of a new repository. chunkerName is
// ChunkerGear (the default, for "") or ChunkerRabin; its secret (seed or
// polynomial) is chosen at random.
func NewRepoConfig(packSize int64, unencrypted bool, chunkerName string) (*Config, error) {
	var id [32]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	c := &Config{
		Version:     Version,
		ID:          hex.EncodeToString(id[:]),
		Created:     time.Now().UTC().Truncate(time.Second),
		Chunker:     chunkerName,
		MinChunk:    DefaultMinChunk,
		MaxChunk:    chunker.MaxSize,
		AvgBits:     DefaultAvgBits,
		Compression: CompressionZstd,
		PackSize:    packSize,
		Cipher:      cipherAESGCM,
	}
	switch c.Chunker {
	case "", ChunkerGear:
		c.Chunker = ChunkerGear
		var seed [32]byte
		if _, err := rand.Read(seed[:]); err != nil {
			return nil, err
		}
		c.ChunkerSeed = hex.EncodeToString(seed[:])
	case ChunkerRabin:
		pol, err := chunker.RandomPolynomial()
		if err != nil {
			return nil, fmt.Errorf("chunker polynomial: %w", err)
		}
		c.Polynomial = strconv.FormatUint(uint64(pol), 16)
	}
	if c.PackSize == 0 {
		c.PackSize = defaultPackSize
	}
	if unencrypted {
		c.Cipher = cipherNone
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Chunk sizes of new repositories: at least 256 KiB, about 800 KiB on
// average, at most 8 MiB. restic's defaults (512 KiB, 2^20, 8 MiB) average
// about 1.5 MiB; halving that costs twice the index entries for large files
// (about 100 bytes of memory per MiB stored instead of 50) and gains
// measurably better deduplication of data that shifts (inserts into dumps,
// images, archives that repack a part): each shifted region loses about one
// chunk at either end. On the benchmark dataset, whose shifted copy comes in 8 MiB pieces,
// that is 13 MiB less stored (see README, Benchmarks).
const (
	DefaultMinChunk = 256 << 10
	DefaultAvgBits  = 19
)

// ChunkerName is the chunker's name, also for configs from before the
// field existed.
func (c *Config) ChunkerName() string {
	if c.Chunker == "" {
		return ChunkerRabin
	}
	return c.Chunker
}

// AverageBits is the chunker's average-size exponent.
func (c *Config) AverageBits() int {
	if c.AvgBits == 0 {
		return 20
	}
	return c.AvgBits
}

// Chunker cuts a file's content into chunks: Next appends the next one to
// buf[:0] and returns it, or io.EOF after the last; Reset starts over on
// another reader, keeping the buffers.
type Chunker interface {
	Next(buf []byte) ([]byte, error)
	Reset(rd io.Reader)
}

// NewChunker returns the repository's chunker, with its secret and chunk
// sizes, over rd.
func (c *Config) NewChunker(rd io.Reader) Chunker {
	if c.gear != nil {
		return cdc.New(rd, c.gear, cdc.Params{Min: int(c.MinChunk), Max: int(c.MaxChunk), AvgBits: c.AverageBits()})
	}
	ch := chunker.NewWithBoundaries(rd, c.pol, c.MinChunk, c.MaxChunk)
	ch.SetAverageBits(c.AverageBits())
	return &rabinChunker{ch: ch, cfg: c}
}

// rabinChunker is restic's chunker as a Chunker.
type rabinChunker struct {
	ch  *chunker.Chunker
	cfg *Config
}

func (r *rabinChunker) Next(buf []byte) ([]byte, error) {
	c, err := r.ch.Next(buf)
	if err != nil {
		return nil, err
	}
	return c.Data, nil
}

// Reset points the chunker at rd. restic's reset forgets the average
// size, so it is set again here.
func (r *rabinChunker) Reset(rd io.Reader) {
	r.ch.ResetWithBoundaries(rd, r.cfg.pol, r.cfg.MinChunk, r.cfg.MaxChunk)
	r.ch.SetAverageBits(r.cfg.AverageBits())
}

// DecodeConfigFile parses the outer config object.
func DecodeConfigFile(b []byte) (*ConfigFile, error) {
	var cf ConfigFile
	if err := StrictUnmarshal(b, &cf); err != nil {
		return nil, fmt.Errorf("decode config: %w", err)
	}
	if cf.Format != formatName {
		return nil, fmt.Errorf("decode config: not a custos repository (format %q)", cf.Format)
	}
	if cf.Version != Version {
		return nil, fmt.Errorf("decode config: unsupported format version %d", cf.Version)
	}
	if cf.Encrypted != (cf.Sealed != nil) || cf.Encrypted == (cf.Config != nil) {
		return nil, errors.New("decode config: encrypted flag does not match its contents")
	}
	return &cf, nil
}

// DecodeRepoConfig opens and validates the inner config with s.
func DecodeRepoConfig(cf *ConfigFile, s *Sealer) (*Config, error) {
	var c Config
	if cf.Encrypted {
		if !s.Encrypted() {
			return nil, errors.New("config is encrypted but no key given")
		}
		pt, err := s.Open(nil, cf.Sealed)
		if err != nil {
			return nil, fmt.Errorf("open config: %w", err)
		}
		if err := StrictUnmarshal(pt, &c); err != nil {
			return nil, fmt.Errorf("decode config: %w", err)
		}
	} else {
		c = *cf.Config
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if c.ID != cf.ID {
		return nil, errors.New("config: inner and outer repository ids differ")
	}
	if (c.Cipher == cipherNone) == cf.Encrypted {
		return nil, errors.New("config: cipher does not match the encrypted flag")
	}
	return &c, nil
}

func EncodeConfigFile(c *Config, s *Sealer) ([]byte, error) {
	cf := ConfigFile{Format: formatName, Version: Version, ID: c.ID, Encrypted: s.Encrypted()}
	if s.Encrypted() {
		inner, err := json.Marshal(c)
		if err != nil {
			return nil, err
		}
		cf.Sealed = s.Seal(nil, inner)
	} else {
		cf.Config = c
	}
	return json.MarshalIndent(&cf, "", "  ")
}

// StrictUnmarshal decodes one JSON value and rejects trailing data.
func StrictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after JSON value")
	}
	return nil
}
