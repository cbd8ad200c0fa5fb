package deploy

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// The Compose file is read here without a YAML library (the module has
// none): yamlNode parses the plain subset it is written in, block maps and
// lists, scalars (plain, single- or double-quoted) and flow lists written
// as JSON arrays. Anything else (anchors, aliases, merges, multi-line
// scalars, flow maps) is refused, so the file stays within what this reads;
// CI validates the full YAML against the Compose schema apart.

// yamlNode is a map, a list or a scalar.
type yamlNode struct {
	Map    map[string]*yamlNode
	Keys   []string // of Map, in file order
	List   []*yamlNode
	Scalar *string
	Line   int
}

type yamlLine struct {
	n      int // 1-based line number
	indent int
	text   string
}

// parseYAMLSubset parses src.
func parseYAMLSubset(src string) (*yamlNode, error) {
	var lines []yamlLine
	for i, raw := range strings.Split(src, "\n") {
		text := stripComment(raw)
		if strings.TrimSpace(text) == "" {
			continue
		}
		if strings.Contains(raw, "\t") {
			return nil, fmt.Errorf("line %d: tab", i+1)
		}
		trimmed := strings.TrimLeft(text, " ")
		for _, bad := range []string{"&", "*", "<<", "|", ">", "{", "!"} {
			if strings.HasPrefix(trimmed, bad) || strings.Contains(trimmed, ": "+bad) || strings.Contains(trimmed, "- "+bad) {
				return nil, fmt.Errorf("line %d: %q is outside the subset this test reads", i+1, bad)
			}
		}
		lines = append(lines, yamlLine{n: i + 1, indent: len(text) - len(trimmed), text: strings.TrimRight(trimmed, " ")})
	}
	p := &yamlParser{lines: lines}
	n, err := p.block(0)
	if err != nil {
		return nil, err
	}
	if p.i != len(p.lines) {
		return nil, fmt.Errorf("line %d: unexpected indentation", p.lines[p.i].n)
	}
	return n, nil
}

// stripComment cuts a comment: a '#' at the start or after a space,
// outside quotes.
func stripComment(s string) string {
	var quote rune
	for i, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
		case r == '"' || r == '\'':
			quote = r
		case r == '#' && (i == 0 || s[i-1] == ' '):
			return s[:i]
		}
	}
	return s
}

type yamlParser struct {
	lines []yamlLine
	i     int
}

// block parses the map or list whose lines are at indent.
func (p *yamlParser) block(indent int) (*yamlNode, error) {
	if p.i >= len(p.lines) {
		return nil, fmt.Errorf("unexpected end")
	}
	first := p.lines[p.i]
	if first.indent != indent {
		return nil, fmt.Errorf("line %d: indentation %d, want %d", first.n, first.indent, indent)
	}
	if strings.HasPrefix(first.text, "- ") {
		n := &yamlNode{Line: first.n}
		for p.i < len(p.lines) && p.lines[p.i].indent == indent && strings.HasPrefix(p.lines[p.i].text, "- ") {
			l := p.lines[p.i]
			p.i++
			v, err := scalarOrFlow(l.n, strings.TrimPrefix(l.text, "- "))
			if err != nil {
				return nil, err
			}
			n.List = append(n.List, v)
		}
		return n, nil
	}
	n := &yamlNode{Map: map[string]*yamlNode{}, Line: first.n}
	for p.i < len(p.lines) && p.lines[p.i].indent == indent {
		l := p.lines[p.i]
		key, rest, ok := strings.Cut(l.text, ":")
		if !ok || (rest != "" && !strings.HasPrefix(rest, " ")) {
			return nil, fmt.Errorf("line %d: want key: value, got %q", l.n, l.text)
		}
		key, err := unquote(l.n, key)
		if err != nil {
			return nil, err
		}
		if _, dup := n.Map[key]; dup {
			return nil, fmt.Errorf("line %d: duplicate key %q", l.n, key)
		}
		p.i++
		var v *yamlNode
		if rest = strings.TrimSpace(rest); rest != "" {
			if v, err = scalarOrFlow(l.n, rest); err != nil {
				return nil, err
			}
		} else if p.i < len(p.lines) && p.lines[p.i].indent > indent {
			if v, err = p.block(p.lines[p.i].indent); err != nil {
				return nil, err
			}
		} else {
			v = &yamlNode{Line: l.n} // null
		}
		n.Map[key] = v
		n.Keys = append(n.Keys, key)
	}
	return n, nil
}

func scalarOrFlow(line int, s string) (*yamlNode, error) {
	if strings.HasPrefix(s, "[") {
		var items []string
		if err := json.Unmarshal([]byte(s), &items); err != nil {
			return nil, fmt.Errorf("line %d: a flow list must be a JSON array of strings: %w", line, err)
		}
		n := &yamlNode{Line: line}
		for _, it := range items {
			n.List = append(n.List, &yamlNode{Scalar: &it, Line: line})
		}
		return n, nil
	}
	v, err := unquote(line, s)
	if err != nil {
		return nil, err
	}
	return &yamlNode{Scalar: &v, Line: line}, nil
}

func unquote(line int, s string) (string, error) {
	switch {
	case strings.HasPrefix(s, `"`):
		v, err := strconv.Unquote(s)
		if err != nil {
			return "", fmt.Errorf("line %d: %w", line, err)
		}
		return v, nil
	case strings.HasPrefix(s, "'"):
		if len(s) < 2 || !strings.HasSuffix(s, "'") {
			return "", fmt.Errorf("line %d: unterminated quote", line)
		}
		return strings.ReplaceAll(s[1:len(s)-1], "''", "'"), nil
	}
	return s, nil
}

// str returns the scalar at path (map keys), or "" when there is none.
func (n *yamlNode) str(path ...string) string {
	for _, k := range path {
		if n == nil || n.Map == nil {
			return ""
		}
		n = n.Map[k]
	}
	if n == nil || n.Scalar == nil {
		return ""
	}
	return *n.Scalar
}

// get returns the node at path, or nil.
func (n *yamlNode) get(path ...string) *yamlNode {
	for _, k := range path {
		if n == nil || n.Map == nil {
			return nil
		}
		n = n.Map[k]
	}
	return n
}

// strings returns a list's scalars.
func (n *yamlNode) strings() []string {
	if n == nil {
		return nil
	}
	var out []string
	for _, it := range n.List {
		if it.Scalar != nil {
			out = append(out, *it.Scalar)
		}
	}
	return out
}
