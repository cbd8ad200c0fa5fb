package protocol

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Names of hosts and targets can hold any characters, but NATS subject tokens
// and KV keys cannot. EncodeName maps a name to a token that is safe in both:
//
//   - a name made only of ASCII letters, digits, '-' and '_' is used verbatim;
//   - any other name becomes '=' followed by the unpadded base64url encoding
//     (RFC 4648 §5) of its UTF-8 bytes.
//
// A verbatim name never contains '=', so the two forms cannot collide, and
// DecodeName inverts EncodeName exactly. For example "n00dles" stays
// "n00dles" and "I.I.I.I" becomes "=SS5JLkkuSQ".
func EncodeName(name string) string {
	if isPlain(name) {
		return name
	}
	return "=" + base64.RawURLEncoding.EncodeToString([]byte(name))
}

// ErrBadName is wrapped by DecodeName errors.
var ErrBadName = errors.New("protocol: malformed encoded name")

// DecodeName turns a subject token or KV key produced by EncodeName back into
// the name.
func DecodeName(token string) (string, error) {
	if token == "" {
		return "", fmt.Errorf("%w: empty", ErrBadName)
	}
	if rest, ok := strings.CutPrefix(token, "="); ok {
		// The decoder skips '\r' and '\n'; accepting them would give one
		// name several encodings.
		if strings.ContainsAny(rest, "\r\n") {
			return "", fmt.Errorf("%w: %q", ErrBadName, token)
		}
		// Strict: the unused low bits of the last character must be zero,
		// or "=00" and "=0w" would both decode to "\xd3".
		b, err := base64.RawURLEncoding.Strict().DecodeString(rest)
		if err != nil || len(b) == 0 {
			return "", fmt.Errorf("%w: %q", ErrBadName, token)
		}
		name := string(b)
		if isPlain(name) {
			// Plain names are always sent verbatim; accepting this form
			// would give one name two encodings.
			return "", fmt.Errorf("%w: %q is a plain name in encoded form", ErrBadName, token)
		}
		return name, nil
	}
	if !isPlain(token) {
		return "", fmt.Errorf("%w: %q", ErrBadName, token)
	}
	return token, nil
}

func isPlain(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}
