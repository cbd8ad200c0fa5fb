package strictjson

import (
	"math"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// Problems, as reported in ValueError.Problem and returned by ParseUint and
// ParseFloat. Hand-written decoders report them too, so that every decoder
// words a broken rule the same way.
const (
	ProblemMissing       = "missing"
	ProblemNull          = "null"
	ProblemNegative      = "negative"
	ProblemNotFinite     = "not finite"
	ProblemOutOfRange    = "out of range"
	ProblemNotInteger    = "not an integer"
	ProblemNotNumber     = "not a number"
	ProblemNotString     = "not a string"
	ProblemNotBool       = "not a boolean"
	ProblemNotObject     = "not an object"
	ProblemNotArray      = "not an array"
	ProblemNotTime       = "not an RFC 3339 time"
	ProblemBadUTF8       = "invalid UTF-8"
	ProblemNotJSONObject = "not a JSON object" // the top-level value
)

// ParseUint interprets raw, one complete and syntactically valid JSON value
// (as Raw returns it), as a non-negative integer no greater than max. It
// returns the value, or the problem when raw is not a number
// (ProblemNotNumber), has a fraction or exponent (ProblemNotInteger), is
// negative (ProblemNegative) or is greater than max (ProblemOutOfRange).
// "-0" is zero. Problems are strings rather than errors so that rejecting a
// value costs no allocation.
func ParseUint(raw []byte, max uint64) (n uint64, problem string) {
	if len(raw) == 0 {
		return 0, ProblemNotNumber
	}
	if c := raw[0]; c != '-' && (c < '0' || c > '9') {
		return 0, ProblemNotNumber
	}
	for _, c := range raw {
		if c == '.' || c == 'e' || c == 'E' {
			return 0, ProblemNotInteger
		}
	}
	if raw[0] == '-' {
		for _, c := range raw[1:] {
			if c != '0' {
				return 0, ProblemNegative
			}
		}
		return 0, ""
	}
	for _, c := range raw {
		d := uint64(c - '0')
		if d > max || n > (max-d)/10 {
			return 0, ProblemOutOfRange
		}
		n = n*10 + d
	}
	return n, ""
}

// ParseFloat interprets raw, one complete and syntactically valid JSON value
// (as Raw returns it), as a finite float64. It returns the value, or the
// problem: ProblemNotNumber, or ProblemNotFinite for a number too large for
// a float64 (such as 1e400). Numbers too small round to zero, as with
// encoding/json.
func ParseFloat(raw []byte) (f float64, problem string) {
	if len(raw) == 0 {
		return 0, ProblemNotNumber
	}
	if c := raw[0]; c != '-' && (c < '0' || c > '9') {
		return 0, ProblemNotNumber
	}
	// raw is a valid JSON number, so ParseFloat can only fail with a range
	// error: ±Inf for overflow (reported), a zero or subnormal for underflow
	// (kept, as encoding/json does).
	f, _ = strconv.ParseFloat(string(raw), 64)
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, ProblemNotFinite
	}
	return f, ""
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

// Unescape appends to dst the unescaped form of s, the content of a JSON
// string without its quotes (as Key returns it, or Raw's text less its
// quotes), and returns the extended slice. It decodes like encoding/json: a
// valid surrogate pair becomes one rune, any other surrogate escape becomes
// U+FFFD, and invalid UTF-8 becomes U+FFFD. s should have been checked by
// the Scanner: on text it would reject, Unescape does not panic but its
// result is unspecified.
func Unescape(dst, s []byte) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\\':
			if i+1 >= len(s) {
				return utf8.AppendRune(dst, utf8.RuneError)
			}
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
