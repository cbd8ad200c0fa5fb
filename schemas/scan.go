package schemas

import (
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// maxDepth is the deepest nesting of arrays and objects accepted, the same
// limit as encoding/json's.
const maxDepth = 10000

// String flags reported by scanner.value.
const (
	flEscape uint8 = 1 << iota // the string has a backslash escape
	flHigh                     // the string has a byte >= 0x80
)

// scanner is a small, allocation-free JSON scanner over one message. It
// validates the full JSON grammar (as encoding/json does) while stepping over
// values; decoding of the values it finds is left to the caller.
type scanner struct {
	b   []byte
	i   int
	msg string
}

// syntaxErr reports a JSON syntax error at the current offset.
func (s *scanner) syntaxErr(what string) error {
	return &FieldError{Message: s.msg, Problem: "invalid JSON at offset " + strconv.Itoa(s.i) + ": " + what}
}

func (s *scanner) eof() error { return s.syntaxErr("unexpected end of JSON input") }

func (s *scanner) ws() {
	if s.i < len(s.b) && s.b[s.i] > ' ' {
		return // the common case: compact JSON
	}
	s.skipWS()
}

func (s *scanner) skipWS() {
	b, i := s.b, s.i
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			s.i = i
			return
		}
	}
	s.i = i
}

// expect consumes byte c after optional whitespace.
func (s *scanner) expect(c byte) error {
	s.ws()
	if s.i >= len(s.b) {
		return s.eof()
	}
	if s.b[s.i] != c {
		return s.syntaxErr("invalid character " + strconv.QuoteRune(rune(s.b[s.i])) + ", want " + strconv.QuoteRune(rune(c)))
	}
	s.i++
	return nil
}

// next reports, after optional whitespace, whether the object or array being
// read continues (a comma, consumed) or ends (close, consumed).
func (s *scanner) next(close byte) (more bool, err error) {
	s.ws()
	if s.i >= len(s.b) {
		return false, s.eof()
	}
	switch s.b[s.i] {
	case ',':
		s.i++
		return true, nil
	case close:
		s.i++
		return false, nil
	}
	return false, s.syntaxErr("invalid character " + strconv.QuoteRune(rune(s.b[s.i])) + " after value")
}

// openObject consumes '{' (already checked) and reports whether the object
// has members; if it does, the scanner is left at the first key.
func (s *scanner) openObject() (bool, error) {
	s.i++
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		return false, nil
	}
	return true, nil
}

// key reads an object key and the colon after it, and returns the key's
// content (between its quotes, still escaped) and its string flags.
func (s *scanner) key() (key []byte, fl uint8, err error) {
	s.ws()
	if s.i >= len(s.b) {
		return nil, 0, s.eof()
	}
	if s.b[s.i] != '"' {
		return nil, 0, s.syntaxErr("invalid character " + strconv.QuoteRune(rune(s.b[s.i])) + " looking for object key")
	}
	start := s.i
	if fl, err = s.str(); err != nil {
		return nil, 0, err
	}
	key = s.b[start+1 : s.i-1]
	if err := s.expect(':'); err != nil {
		return nil, 0, err
	}
	s.ws()
	return key, fl, nil
}

// value steps over one JSON value starting at the current offset (after any
// whitespace) and returns its flags (for strings). depth is the nesting depth
// of the container holding the value.
func (s *scanner) value(depth int) (uint8, error) {
	s.ws()
	if s.i >= len(s.b) {
		return 0, s.eof()
	}
	switch c := s.b[s.i]; {
	case c == '"':
		return s.str()
	case c == '{':
		if depth+1 > maxDepth {
			return 0, s.syntaxErr("exceeded max depth")
		}
		more, err := s.openObject()
		for more && err == nil {
			if _, _, err = s.key(); err != nil {
				break
			}
			if _, err = s.value(depth + 1); err != nil {
				break
			}
			more, err = s.next('}')
		}
		return 0, err
	case c == '[':
		if depth+1 > maxDepth {
			return 0, s.syntaxErr("exceeded max depth")
		}
		s.i++
		s.ws()
		if s.i < len(s.b) && s.b[s.i] == ']' {
			s.i++
			return 0, nil
		}
		for {
			if _, err := s.value(depth + 1); err != nil {
				return 0, err
			}
			more, err := s.next(']')
			if err != nil || !more {
				return 0, err
			}
		}
	case c == 't':
		return 0, s.literal("true")
	case c == 'f':
		return 0, s.literal("false")
	case c == 'n':
		return 0, s.literal("null")
	case c == '-' || ('0' <= c && c <= '9'):
		return 0, s.number()
	default:
		return 0, s.syntaxErr("invalid character " + strconv.QuoteRune(rune(c)) + " looking for beginning of value")
	}
}

// raw steps over the next value and returns its text (without surrounding
// whitespace) and its string flags.
func (s *scanner) raw(depth int) ([]byte, uint8, error) {
	s.ws()
	start := s.i
	fl, err := s.value(depth)
	if err != nil {
		return nil, 0, err
	}
	return s.b[start:s.i], fl, nil
}

// end checks that only whitespace follows the top-level value.
func (s *scanner) end() error {
	s.ws()
	if s.i != len(s.b) {
		return s.syntaxErr("invalid character " + strconv.QuoteRune(rune(s.b[s.i])) + " after top-level value")
	}
	return nil
}

func (s *scanner) literal(lit string) error {
	if len(s.b)-s.i < len(lit) {
		if string(s.b[s.i:]) == lit[:len(s.b)-s.i] {
			return s.eof()
		}
		return s.syntaxErr("invalid literal")
	}
	if string(s.b[s.i:s.i+len(lit)]) != lit {
		return s.syntaxErr("invalid literal")
	}
	s.i += len(lit)
	return nil
}

func (s *scanner) digits() error {
	b, i := s.b, s.i
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	if i == s.i {
		if i >= len(b) {
			return s.eof()
		}
		return s.syntaxErr("invalid character in number")
	}
	s.i = i
	return nil
}

// number steps over -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() error {
	if s.b[s.i] == '-' {
		s.i++
	}
	if s.i >= len(s.b) {
		return s.eof()
	}
	switch c := s.b[s.i]; {
	case c == '0':
		s.i++
	case '1' <= c && c <= '9':
		_ = s.digits()
	default:
		return s.syntaxErr("invalid character in number")
	}
	if s.i < len(s.b) && s.b[s.i] == '.' {
		s.i++
		if err := s.digits(); err != nil {
			return err
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		if err := s.digits(); err != nil {
			return err
		}
	}
	return nil
}

// strPlain marks the bytes a string holds as they are: printable ASCII
// other than the quote and the backslash.
var strPlain = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// str steps over a string starting at its opening quote.
func (s *scanner) str() (uint8, error) {
	var fl uint8
	b, i := s.b, s.i+1
	for {
		for i < len(b) && strPlain[b[i]] {
			i++
		}
		if i >= len(b) {
			s.i = i
			return fl, s.eof()
		}
		switch c := b[i]; {
		case c == '"':
			s.i = i + 1
			return fl, nil
		case c == '\\':
			fl |= flEscape
			i++
			if i >= len(b) {
				s.i = i
				return fl, s.eof()
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i++
			case 'u':
				i++
				for k := 0; k < 4; k++ {
					if i >= len(b) {
						s.i = i
						return fl, s.eof()
					}
					if hexVal(b[i]) < 0 {
						s.i = i
						return fl, s.syntaxErr("invalid character in \\u escape")
					}
					i++
				}
			default:
				s.i = i
				return fl, s.syntaxErr("invalid escape in string")
			}
		case c < 0x20:
			s.i = i
			return fl, s.syntaxErr("control character in string")
		default: // >= 0x80
			fl |= flHigh
			i++
		}
	}
}

func hexVal(c byte) rune {
	switch {
	case '0' <= c && c <= '9':
		return rune(c - '0')
	case 'a' <= c && c <= 'f':
		return rune(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return rune(c-'A') + 10
	}
	return -1
}

// u4 decodes the four hex digits after "\u" at the start of s, or returns
// -1 when s does not start with a \u escape.
func u4(s []byte) rune {
	if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
		return -1
	}
	var r rune
	for _, c := range s[2:6] {
		v := hexVal(c)
		if v < 0 {
			return -1
		}
		r = r<<4 | v
	}
	return r
}

// unescape appends the unescaped form of a string's content (without its
// quotes; already checked by str) to dst. It decodes like encoding/json: a
// valid surrogate pair becomes one rune, any other surrogate escape becomes
// U+FFFD, and invalid UTF-8 becomes U+FFFD.
func unescape(dst, s []byte) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\\':
			switch s[i+1] {
			case 'b':
				dst = append(dst, '\b')
			case 'f':
				dst = append(dst, '\f')
			case 'n':
				dst = append(dst, '\n')
			case 'r':
				dst = append(dst, '\r')
			case 't':
				dst = append(dst, '\t')
			case 'u':
				r := u4(s[i:])
				i += 6
				if utf16.IsSurrogate(r) {
					if d := utf16.DecodeRune(r, u4(s[i:])); d != utf8.RuneError {
						i += 6
						dst = utf8.AppendRune(dst, d)
						continue
					}
					r = utf8.RuneError
				}
				dst = utf8.AppendRune(dst, r)
				continue
			default: // '"', '\\', '/'
				dst = append(dst, s[i+1])
			}
			i += 2
		case c < utf8.RuneSelf:
			dst = append(dst, c)
			i++
		default:
			r, size := utf8.DecodeRune(s[i:])
			dst = utf8.AppendRune(dst, r)
			i += size
		}
	}
	return dst
}
