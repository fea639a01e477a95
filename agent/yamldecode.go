package agent

import (
	"fmt"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"
)

// decoder walks a yaml.v3 node tree field by field. It never stops at the
// first problem: every error is appended to errs with its file, line and
// field, and decoding goes on with the next field.
type decoder struct {
	file string
	errs *ConfigErrors
}

func (d *decoder) errorf(n *yaml.Node, field, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	*d.errs = append(*d.errs, &ConfigError{File: d.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// fields maps a key name to the function that decodes its value. The
// function gets the value node and the full dotted field name.
type fields map[string]func(v *yaml.Node, field string)

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

// mapping decodes a mapping node strictly: unknown and repeated keys are
// errors. It returns the set of keys present.
func (d *decoder) mapping(n *yaml.Node, prefix string, fs fields) map[string]*yaml.Node {
	seen := map[string]*yaml.Node{}
	n = resolveAlias(n)
	if n == nil || isNull(n) {
		return seen
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n, prefix, "expected a mapping, got %s", kindName(n))
		return seen
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.errorf(k, prefix, "expected a field name, got %s", kindName(k))
			continue
		}
		field := join(prefix, k.Value)
		if _, dup := seen[k.Value]; dup {
			d.errorf(k, field, "field given more than once")
			continue
		}
		seen[k.Value] = v
		fn, ok := fs[k.Value]
		if !ok {
			d.errorf(k, field, "unknown field")
			continue
		}
		fn(resolveAlias(v), field)
	}
	return seen
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return "nothing"
		case "!!str":
			return fmt.Sprintf("the string %q", n.Value)
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "something else"
}

// str decodes any non-null scalar as a string: hostnames and passwords may
// well look like numbers, and that is not a mistake.
func (d *decoder) str(n *yaml.Node, field string, out *string) bool {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		d.errorf(n, field, "expected a string, got %s", kindName(n))
		return false
	}
	*out = n.Value
	return true
}

func (d *decoder) boolean(n *yaml.Node, field string, out *bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
		d.errorf(n, field, "expected true or false, got %s", kindName(n))
		return
	}
	b, err := strconv.ParseBool(n.Value)
	if err != nil {
		// yaml 1.1 spellings (yes/no/on/off) carry the bool tag too.
		switch n.Value {
		case "yes", "Yes", "YES", "on", "On", "ON":
			b = true
		case "no", "No", "NO", "off", "Off", "OFF":
			b = false
		default:
			d.errorf(n, field, "expected true or false, got %q", n.Value)
			return
		}
	}
	*out = b
}

func (d *decoder) integer(n *yaml.Node, field string, out *int) bool {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		d.errorf(n, field, "expected a whole number, got %s", kindName(n))
		return false
	}
	v, err := strconv.ParseInt(n.Value, 0, 32)
	if err != nil {
		d.errorf(n, field, "expected a whole number, got %q", n.Value)
		return false
	}
	*out = int(v)
	return true
}

func (d *decoder) duration(n *yaml.Node, field string, out *time.Duration) {
	var s string
	if n.Kind != yaml.ScalarNode || isNull(n) {
		d.errorf(n, field, "expected a duration like 30m or 2h, got %s", kindName(n))
		return
	}
	s = n.Value
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		d.errorf(n, field, "expected a duration like 30m or 2h, got %q", s)
		return
	}
	*out = v
}

func (d *decoder) sequence(n *yaml.Node, field string, each func(i int, item *yaml.Node, field string)) {
	if isNull(n) {
		return
	}
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, field, "expected a list, got %s", kindName(n))
		return
	}
	for i, item := range n.Content {
		each(i, resolveAlias(item), fmt.Sprintf("%s[%d]", field, i))
	}
}

func (d *decoder) strList(n *yaml.Node, field string, out *[]string) {
	d.sequence(n, field, func(_ int, item *yaml.Node, f string) {
		var s string
		if d.str(item, f, &s) {
			*out = append(*out, s)
		}
	})
}

// params decodes a free-form mapping. Its keys are checked later by the
// handler that reads them, so that each handler type owns its own params.
func (d *decoder) params(n *yaml.Node, field string, out *Params) {
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n, field, "expected a mapping, got %s", kindName(n))
		return
	}
	p := Params{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], resolveAlias(n.Content[i+1])
		f := join(field, k.Value)
		if _, dup := p[k.Value]; dup {
			d.errorf(k, f, "field given more than once")
			continue
		}
		var val any
		if err := v.Decode(&val); err != nil {
			d.errorf(v, f, "%v", err)
			continue
		}
		p[k.Value] = Param{Value: val, Line: v.Line, File: d.file}
	}
	*out = p
}

// decodeNiceLevel reads a nice level (-20..19); nil when it is invalid.
func decodeNiceLevel(d *decoder, n *yaml.Node, field string) *int {
	var v int
	if !d.integer(n, field, &v) {
		return nil
	}
	if v < -20 || v > 19 {
		d.errorf(n, field, "nice level must be between -20 and 19, got %d", v)
		return nil
	}
	return &v
}

// decodeIOClass reads an I/O class as in ionice(1) (0..3); nil when it
// is invalid.
func decodeIOClass(d *decoder, n *yaml.Node, field string) *int {
	var v int
	if !d.integer(n, field, &v) {
		return nil
	}
	if v < 0 || v > 3 {
		d.errorf(n, field, "io class must be 0 (none), 1 (realtime), 2 (best-effort) or 3 (idle), got %d", v)
		return nil
	}
	return &v
}
