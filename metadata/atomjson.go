package metadata

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"
)

// decodeAtoms decodes an atom list chunk (a JSON array of Atom). Loading
// a catalog decodes every atom of every dataset, 100,000 and more, which
// encoding/json does at about a microsecond each: most of a find without
// an agent, and of the agent's start. Chunks are written by json.Marshal,
// so the fast path reads exactly that form (objects of the three string
// fields, no escapes, valid UTF-8) and hands anything else to
// encoding/json, which then decides, as it always did.
func decodeAtoms(b []byte) ([]Atom, error) {
	if atoms, ok := decodeAtomsFast(b); ok {
		return atoms, nil
	}
	var atoms []Atom
	if err := json.Unmarshal(b, &atoms); err != nil {
		return nil, err
	}
	return atoms, nil
}

func decodeAtomsFast(b []byte) ([]Atom, bool) {
	p := atomParser{b: b}
	if !p.byte('[') {
		return nil, false
	}
	atoms := make([]Atom, 0, bytes.Count(b, []byte(`"name":`)))
	// The atoms of a chunk mostly share their snapshot: one string.
	var lastSnap []byte
	var lastSnapS string
	if p.peek(']') {
		p.i++
		return atoms, p.end()
	}
	for {
		var a Atom
		if !p.byte('{') {
			return nil, false
		}
		seen := 0
		for !p.peek('}') {
			if seen > 0 && !p.byte(',') {
				return nil, false
			}
			k, ok := p.str()
			if !ok || !p.byte(':') {
				return nil, false
			}
			v, ok := p.str()
			if !ok {
				return nil, false
			}
			var bit int
			switch string(k) {
			case "name":
				a.Name, bit = string(v), 1
			case "path":
				a.Path, bit = string(v), 2
			case "snapshot_id":
				if lastSnap == nil || !bytes.Equal(v, lastSnap) {
					lastSnap, lastSnapS = v, string(v)
				}
				a.SnapshotID, bit = lastSnapS, 4
			default:
				return nil, false
			}
			if seen&bit != 0 {
				return nil, false // a repeated field: encoding/json's rules
			}
			seen |= bit
		}
		p.i++
		atoms = append(atoms, a)
		if p.byte(',') {
			continue
		}
		if !p.byte(']') {
			return nil, false
		}
		return atoms, p.end()
	}
}

type atomParser struct {
	b []byte
	i int
}

func (p *atomParser) space() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *atomParser) peek(c byte) bool {
	p.space()
	return p.i < len(p.b) && p.b[p.i] == c
}

func (p *atomParser) byte(c byte) bool {
	if p.peek(c) {
		p.i++
		return true
	}
	return false
}

// str reads a string without escapes, control characters or invalid
// UTF-8; anything else is not the fast path's.
func (p *atomParser) str() ([]byte, bool) {
	if !p.byte('"') {
		return nil, false
	}
	start := p.i
	ascii := true
	for ; p.i < len(p.b); p.i++ {
		c := p.b[p.i]
		switch {
		case c == '"':
			s := p.b[start:p.i]
			p.i++
			return s, ascii || utf8.Valid(s)
		case c == '\\' || c < 0x20:
			return nil, false
		case c >= 0x80:
			ascii = false
		}
	}
	return nil, false
}

func (p *atomParser) end() bool {
	p.space()
	return p.i == len(p.b)
}
