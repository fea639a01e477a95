package format

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// TestChunkerFields checks which combinations of chunker fields a config
// may hold: each chunker needs its own secret and refuses the other's, and
// a config without "chunker" (from before gear) is rabin.
func TestChunkerFields(t *testing.T) {
	gear, err := NewRepoConfig(0, false, "")
	if err != nil {
		t.Fatal(err)
	}
	rabin, err := NewRepoConfig(0, false, ChunkerRabin)
	if err != nil {
		t.Fatal(err)
	}
	if gear.Chunker != ChunkerGear || len(gear.ChunkerSeed) != 64 || gear.Polynomial != "" {
		t.Fatalf("new default config: chunker %q, seed %q, polynomial %q", gear.Chunker, gear.ChunkerSeed, gear.Polynomial)
	}
	if rabin.ChunkerSeed != "" || rabin.Polynomial == "" {
		t.Fatalf("new rabin config: seed %q, polynomial %q", rabin.ChunkerSeed, rabin.Polynomial)
	}
	for _, tc := range []struct {
		name    string
		edit    func(c *Config)
		base    *Config
		want    string // ChunkerName, or "" when invalid
		wantErr string
	}{
		{"gear", func(*Config) {}, gear, ChunkerGear, ""},
		{"rabin", func(*Config) {}, rabin, ChunkerRabin, ""},
		{"from before gear", func(c *Config) { c.Chunker = "" }, rabin, ChunkerRabin, ""},
		{"gear with a polynomial", func(c *Config) { c.Polynomial = rabin.Polynomial }, gear, "", "chunker_polynomial"},
		{"rabin with a seed", func(c *Config) { c.ChunkerSeed = gear.ChunkerSeed }, rabin, "", "chunker_seed"},
		{"gear without a seed", func(c *Config) { c.ChunkerSeed = "" }, gear, "", "chunker seed"},
		{"gear with a short seed", func(c *Config) { c.ChunkerSeed = c.ChunkerSeed[:62] }, gear, "", "chunker seed"},
		{"gear with a seed not hex", func(c *Config) { c.ChunkerSeed = strings.Repeat("g", 64) }, gear, "", "chunker seed"},
		{"unknown chunker", func(c *Config) { c.Chunker = "buzhash" }, gear, "", "unknown chunker"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := *tc.base
			tc.edit(&c)
			err := c.Validate()
			switch {
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one naming %s", err, tc.wantErr)
			case tc.wantErr == "" && err != nil:
				t.Fatal(err)
			case tc.wantErr == "" && c.ChunkerName() != tc.want:
				t.Fatalf("chunker %q, want %q", c.ChunkerName(), tc.want)
			}
		})
	}
}

// TestConfigChunkerRoundTrip seals each kind of config and opens it again:
// the chunker cuts alike after the round trip.
func TestConfigChunkerRoundTrip(t *testing.T) {
	s, err := NewSealer(make([]byte, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 4<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	for _, name := range []string{ChunkerGear, ChunkerRabin} {
		cfg, err := NewRepoConfig(0, false, name)
		if err != nil {
			t.Fatal(err)
		}
		b, err := EncodeConfigFile(cfg, s)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := DecodeConfigFile(b)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeRepoConfig(cf, s)
		if err != nil {
			t.Fatal(err)
		}
		if a, b := chunkLengths(t, cfg, data), chunkLengths(t, got, data); len(a) < 2 || !slices.Equal(a, b) {
			t.Fatalf("%s: cuts %v before, %v after the round trip", name, a, b)
		}
	}
}

func chunkLengths(t *testing.T, c *Config, data []byte) []int {
	t.Helper()
	ch := c.NewChunker(strings.NewReader(string(data)))
	var out []int
	for {
		b, err := ch.Next(nil)
		if err != nil {
			return out
		}
		out = append(out, len(b))
	}
}
