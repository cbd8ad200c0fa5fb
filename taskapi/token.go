package taskapi

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
)

// NewToken returns a fresh random task secret: 32 random bytes, hex-encoded.
func NewToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("taskapi: new token: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// TokenEqual compares a presented token with the expected one in constant
// time (for tokens of equal length). An empty expected token never matches.
func TokenEqual(got, want string) bool {
	if want == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}
