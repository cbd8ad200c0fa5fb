package strictjson

import "strconv"

// MaxDepth is the deepest nesting of arrays and objects accepted, the same
// limit as encoding/json's. The document's top-level value is at depth 1.
const MaxDepth = 10000

// Flags describe a JSON string the Scanner stepped over.
type Flags uint8

const (
	// Escaped marks a string holding a backslash escape: its content must
	// go through Unescape.
	Escaped Flags = 1 << iota
	// NonASCII marks a string holding a byte >= 0x80: its content may be
	// invalid UTF-8.
	NonASCII
)

// SyntaxError reports input that is not valid JSON.
type SyntaxError struct {
	Offset int64  // byte offset at which the error was found
	Msg    string // what is wrong, e.g. "invalid character 'x' looking for beginning of value"
}

// Error formats the error as "strictjson: invalid JSON at offset 12: ...".
func (e *SyntaxError) Error() string {
	return "strictjson: invalid JSON at offset " + strconv.FormatInt(e.Offset, 10) + ": " + e.Msg
}

// Scanner is a small, allocation-free JSON scanner over one document, for
// hand-written decoders (Decode uses it too). It checks the full JSON
// grammar, as encoding/json does, while stepping over values; decoding the
// values it finds is left to the caller, with ParseUint, ParseFloat and
// Unescape. Every error it returns is a *SyntaxError.
//
// A decoder typically calls Peek to see what comes next, OpenObject, then
// Key, Raw (or Value) and Next for each member, and End once the top-level
// value is read. The zero Scanner scans an empty document; Reset gives it
// one to scan.
type Scanner struct {
	b []byte
	i int
}

// Reset makes s scan data from its start.
func (s *Scanner) Reset(data []byte) { s.b, s.i = data, 0 }

// syntaxErr reports a JSON syntax error at the current offset.
func (s *Scanner) syntaxErr(what string) error {
	return &SyntaxError{Offset: int64(s.i), Msg: what}
}

func (s *Scanner) eof() error { return s.syntaxErr("unexpected end of JSON input") }

// SkipSpace steps over whitespace.
func (s *Scanner) SkipSpace() {
	if s.i < len(s.b) && s.b[s.i] > ' ' {
		return // the common case: compact JSON
	}
	s.skipWS()
}

func (s *Scanner) skipWS() {
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

// Peek steps over whitespace and returns the next byte, or 0 at the end of
// the input.
func (s *Scanner) Peek() byte {
	s.SkipSpace()
	if s.i >= len(s.b) {
		return 0
	}
	return s.b[s.i]
}

// Consume steps over lit when the input continues with it (whitespace is
// not skipped, before or after), and reports whether it did. It lets a
// decoder match the text it expects, such as `"key":`, in one comparison.
func (s *Scanner) Consume(lit string) bool {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		return false
	}
	s.i += len(lit)
	return true
}

// expect consumes byte c after optional whitespace.
func (s *Scanner) expect(c byte) error {
	s.SkipSpace()
	if s.i >= len(s.b) {
		return s.eof()
	}
	if s.b[s.i] != c {
		return s.syntaxErr("invalid character " + strconv.QuoteRune(rune(s.b[s.i])) + ", want " + strconv.QuoteRune(rune(c)))
	}
	s.i++
	return nil
}

// Next reports, after optional whitespace, whether the object or array being
// read continues (a comma, consumed) or ends (close, '}' or ']', consumed).
func (s *Scanner) Next(close byte) (more bool, err error) {
	s.SkipSpace()
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

// OpenObject consumes the '{' that opens an object, after optional
// whitespace, and reports whether the object has members; if it does, the
// scanner is left before the first key.
func (s *Scanner) OpenObject() (more bool, err error) {
	s.SkipSpace()
	if s.i >= len(s.b) {
		return false, s.eof()
	}
	if s.b[s.i] != '{' {
		return false, s.syntaxErr("invalid character " + strconv.QuoteRune(rune(s.b[s.i])) + ", want '{'")
	}
	return s.openObject()
}

// openObject is OpenObject at a '{' already checked.
func (s *Scanner) openObject() (bool, error) {
	s.i++
	s.SkipSpace()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		return false, nil
	}
	return true, nil
}

// Key reads an object key, the colon after it and any whitespace after
// that, and returns the key's content (between its quotes, still escaped:
// see Unescape) and its string flags. The returned slice aliases the input.
func (s *Scanner) Key() (key []byte, fl Flags, err error) {
	s.SkipSpace()
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
	s.SkipSpace()
	return key, fl, nil
}

// Value steps over one JSON value (after any whitespace) and returns its
// string flags (0 unless it is a string). depth is the nesting depth of the
// array or object holding the value (0 for the top-level value); arrays and
// objects nested deeper than MaxDepth are syntax errors.
func (s *Scanner) Value(depth int) (Flags, error) {
	s.SkipSpace()
	if s.i >= len(s.b) {
		return 0, s.eof()
	}
	switch c := s.b[s.i]; {
	case c == '"':
		return s.str()
	case c == '{':
		if depth+1 > MaxDepth {
			return 0, s.syntaxErr("exceeded max depth")
		}
		more, err := s.openObject()
		for more && err == nil {
			if _, _, err = s.Key(); err != nil {
				break
			}
			if _, err = s.Value(depth + 1); err != nil {
				break
			}
			more, err = s.Next('}')
		}
		return 0, err
	case c == '[':
		if depth+1 > MaxDepth {
			return 0, s.syntaxErr("exceeded max depth")
		}
		s.i++
		s.SkipSpace()
		if s.i < len(s.b) && s.b[s.i] == ']' {
			s.i++
			return 0, nil
		}
		for {
			if _, err := s.Value(depth + 1); err != nil {
				return 0, err
			}
			more, err := s.Next(']')
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

// Raw steps over the next value, as Value does, and returns its text
// (without surrounding whitespace; it aliases the input) and its string
// flags.
func (s *Scanner) Raw(depth int) ([]byte, Flags, error) {
	s.SkipSpace()
	start := s.i
	fl, err := s.Value(depth)
	if err != nil {
		return nil, 0, err
	}
	return s.b[start:s.i], fl, nil
}

// End checks that only whitespace follows the top-level value.
func (s *Scanner) End() error {
	s.SkipSpace()
	if s.i != len(s.b) {
		return s.syntaxErr("invalid character " + strconv.QuoteRune(rune(s.b[s.i])) + " after top-level value")
	}
	return nil
}

// PlainUint is a fast path for unsigned integers: it reads, at the current
// offset, a number made only of digits (no sign, fraction or exponent, not
// starting with 0) that certainly fits in a uint64, and returns it. On
// anything else it returns false and leaves the scanner where it was, for
// Raw and ParseUint to judge the value.
func (s *Scanner) PlainUint() (uint64, bool) {
	b, i := s.b, s.i
	if i >= len(b) || b[i] < '1' || b[i] > '9' {
		return 0, false
	}
	var n uint64
	start := i
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	if i-start > 19 { // may overflow: let ParseUint decide
		return 0, false
	}
	if i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E') {
		return 0, false
	}
	for _, c := range b[start:i] {
		n = n*10 + uint64(c-'0')
	}
	s.i = i
	return n, true
}

func (s *Scanner) literal(lit string) error {
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

func (s *Scanner) digits() error {
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
func (s *Scanner) number() error {
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
func (s *Scanner) str() (Flags, error) {
	var fl Flags
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
			fl |= Escaped
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
			fl |= NonASCII
			i++
		}
	}
}
