package metadata

import (
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

// TestDecodeAtomsAsEncodingJSON: the atom list decoder gives what
// encoding/json gives, value and error alike, for the lists json.Marshal
// writes (random names with quotes, backslashes, control characters and
// non-ASCII letters, which json.Marshal escapes) and for hand-written JSON
// the fast path leaves to encoding/json.
func TestDecodeAtomsAsEncodingJSON(t *testing.T) {
	inputs := []string{
		`[]`, ` [ ] `, `null`, `[null]`, `{}`, `[{}]`, `[`, `[{"name":"a"}`, `[{"name":"a"},]`,
		`[{"name":"a","path":"p","snapshot_id":"s"},{"name":"b","snapshot_id":"s"}]`,
		"[ {\n\"name\" : \"a\" } ,\t{\"path\":\"x\"} ]",
		`[{"Name":"upper"}]`, `[{"name":"a","name":"b"}]`, `[{"name":"a","extra":1}]`,
		`[{"name":1}]`, `[{"name":"tab\there"}]`, `[{"name":"\u00e9t\u00e9"}]`, `[{"name":"été"}]`,
		"[{\"name\":\"bad \xff utf8\"}]", `[{"name":"a"}] x`, `[{"name":"a"}][]`,
	}
	rng := rand.New(rand.NewPCG(7, 8))
	plain := []rune("ab/._-é€😀 ")
	escaped := append([]rune("\"\\\t\n\x01<&"), plain...)
	var alphabet []rune
	word := func() string {
		var b strings.Builder
		for range rng.IntN(12) {
			b.WriteRune(alphabet[rng.IntN(len(alphabet))])
		}
		return b.String()
	}
	for i := range 200 {
		alphabet = [][]rune{plain, escaped}[i%2]
		atoms := make([]Atom, rng.IntN(20))
		for i := range atoms {
			atoms[i] = Atom{Name: word(), Path: word(), SnapshotID: []string{"", "s1", "s2", word()}[rng.IntN(4)]}
		}
		b, err := json.Marshal(atoms)
		if err != nil {
			t.Fatal(err)
		}
		inputs = append(inputs, string(b))
	}
	fast := 0
	for _, in := range inputs {
		var want []Atom
		werr := json.Unmarshal([]byte(in), &want)
		got, gerr := decodeAtoms([]byte(in))
		if (werr == nil) != (gerr == nil) || (werr == nil && !reflect.DeepEqual(got, want) && !(len(got) == 0 && len(want) == 0)) {
			t.Errorf("decodeAtoms(%q) = %#v, %v; encoding/json: %#v, %v", in, got, gerr, want, werr)
		}
		if _, ok := decodeAtomsFast([]byte(in)); ok {
			fast++
		}
	}
	// The lists json.Marshal writes without escapes take the fast path.
	if _, ok := decodeAtomsFast([]byte(`[{"name":"a","path":"p","snapshot_id":"s"}]`)); !ok || fast < 50 {
		t.Errorf("the fast path took %d of %d lists", fast, len(inputs))
	}
	t.Logf("fast path: %d of %d", fast, len(inputs))
}
