package strictjsontest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// jnode is a JSON value that keeps the order of its members, may have
// duplicate keys and may hold any raw text, even invalid JSON.
type jnode struct {
	raw     string // a scalar, or text put in place; "" for an array or object
	obj     bool
	members []jmember // of an object
	elems   []*jnode  // of an array (when raw == "" and !obj)
}

type jmember struct {
	key string // the key as written, with its quotes
	val *jnode
}

// parseJNode parses b, one valid JSON value.
func parseJNode(b []byte) (*jnode, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var walk func() (*jnode, error)
	walk = func() (*jnode, error) {
		tok, err := d.Token()
		if err != nil {
			return nil, err
		}
		switch tok {
		case json.Delim('{'):
			n := &jnode{obj: true}
			for d.More() {
				k, err := d.Token()
				if err != nil {
					return nil, err
				}
				kb, _ := json.Marshal(k)
				v, err := walk()
				if err != nil {
					return nil, err
				}
				n.members = append(n.members, jmember{string(kb), v})
			}
			_, err := d.Token()
			return n, err
		case json.Delim('['):
			n := &jnode{elems: []*jnode{}}
			for d.More() {
				e, err := walk()
				if err != nil {
					return nil, err
				}
				n.elems = append(n.elems, e)
			}
			_, err := d.Token()
			return n, err
		}
		rb, err := json.Marshal(tok)
		if err != nil {
			return nil, err
		}
		return &jnode{raw: string(rb)}, nil
	}
	return walk()
}

func (n *jnode) appendTo(b []byte) []byte {
	switch {
	case n.raw != "":
		return append(b, n.raw...)
	case n.obj:
		b = append(b, '{')
		for i, m := range n.members {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(append(append(b, m.key...), ':'), m.val.appendTo(nil)...)
		}
		return append(b, '}')
	}
	b = append(b, '[')
	for i, e := range n.elems {
		if i > 0 {
			b = append(b, ',')
		}
		b = e.appendTo(b)
	}
	return append(b, ']')
}

// Variants calls emit with every variant of doc, one valid JSON value, made
// by changing one place in it: each member deleted, given each value in
// values, given a duplicate key before and after it (holding each value in
// dups), and written with an escaped key; each array element deleted and
// given each value in values. The values are put in place verbatim, so they
// may be invalid JSON. It returns an error when doc is not valid JSON.
func Variants(doc []byte, values, dups []string, emit func([]byte)) error {
	root, err := parseJNode(doc)
	if err != nil {
		return fmt.Errorf("strictjsontest: variants of %q: %w", doc, err)
	}
	out := func() { emit(root.appendTo(nil)) }
	var walk func(n *jnode)
	walk = func(n *jnode) {
		if n.obj {
			for i := range n.members {
				m := n.members[i]
				ms := n.members
				n.members = append(ms[:i:i], ms[i+1:]...)
				out()
				for _, v := range dups {
					dup := jmember{m.key, &jnode{raw: v}}
					n.members = append(append(ms[:i:i], dup), ms[i:]...)
					out()
					n.members = append(append(ms[:i+1:i+1], dup), ms[i+1:]...)
					out()
				}
				n.members = ms
				orig := *m.val
				for _, v := range values {
					*m.val = jnode{raw: v}
					out()
				}
				*m.val = orig
				if k := m.key; len(k) > 2 {
					n.members[i].key = `"\u00` + strings.ToLower(hexByte(k[1])) + k[2:]
					out()
					n.members[i].key = k
				}
				walk(m.val)
			}
			return
		}
		for i, e := range n.elems {
			es := n.elems
			n.elems = append(es[:i:i], es[i+1:]...)
			out()
			n.elems = es
			orig := *e
			for _, v := range values {
				*e = jnode{raw: v}
				out()
			}
			*e = orig
			walk(e)
		}
	}
	walk(root)
	return nil
}

const hexDigits = "0123456789abcdef"

func hexByte(c byte) string { return string([]byte{hexDigits[c>>4], hexDigits[c&0xf]}) }

// Values are the values Variants is typically given: every JSON type, and
// the edge cases of every rule of strictjson.Decode.
var Values = []string{
	`null`, `true`, `false`, `0`, `1`, `-1`, `-0`, `2`, `1.5`, `0.5`, `1e3`, `1E400`, `-1e400`, `1e-400`,
	`9223372036854775807`, `9223372036854775808`, `18446744073709551615`, `18446744073709551616`,
	`""`, `"x"`, `"é"`, "\"a\xffb\"", `"\u00e9\n"`, `"\ud800"`, `"2025-03-01T12:00:00Z"`, `"0000-01-01T00:00:00Z"`,
	`"2025-03-01T14:00:00.5+02:00"`, `"2025-13-01T00:00:00Z"`, `"2025\u002d03-01T12:00:00Z"`,
	`[]`, `[null]`, `[1]`, `[-1]`, `["x"]`, `[{}]`, `[[]]`, `[1,null,-1]`,
	`{}`, `{"a":null}`, `{"a":1}`, `{"a":-1}`, `{"":-1}`, `{"a":1e400}`, "{\"\xff\":-1}", `{"a":{"b":[1,-2]}}`,
	`{"b":-1,"a":-2,"b":1}`, `{"b":-1,"a":"x"}`, `{"b":null,"a":-1,"c":null}`, ` { } `,
}

// Dups are the values Variants is typically given for duplicate keys.
var Dups = []string{`null`, `-1`, `1`, `"x"`, `{}`, `[]`}
