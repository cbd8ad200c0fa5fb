package schemas

import (
	"math"
	"strconv"
)

// uintValue interprets raw, one complete and syntactically valid JSON value,
// as a non-negative integer no greater than limit. It returns the value, or a
// problem when raw is not a number, has a fraction or exponent, is negative or
// is too large. "-0" is zero.
func uintValue(raw []byte, limit uint64) (uint64, string) {
	if len(raw) == 0 {
		return 0, probNotNumber
	}
	if c := raw[0]; c != '-' && (c < '0' || c > '9') {
		return 0, probNotNumber
	}
	for _, c := range raw {
		if c == '.' || c == 'e' || c == 'E' {
			return 0, probNotInteger
		}
	}
	if raw[0] == '-' {
		for _, c := range raw[1:] {
			if c != '0' {
				return 0, probNegative
			}
		}
		return 0, ""
	}
	var n uint64
	for _, c := range raw {
		d := uint64(c - '0')
		if d > limit || n > (limit-d)/10 {
			return 0, probOutOfRange
		}
		n = n*10 + d
	}
	return n, ""
}

// floatValue interprets raw, one complete and syntactically valid JSON value,
// as a finite float64. Numbers too large for a float64 (such as 1e400) are
// not finite; numbers too small round to zero.
func floatValue(raw []byte) (float64, string) {
	if len(raw) == 0 {
		return 0, probNotNumber
	}
	if c := raw[0]; c != '-' && (c < '0' || c > '9') {
		return 0, probNotNumber
	}
	// raw is a valid JSON number, so ParseFloat can only fail with a range
	// error: ±Inf for overflow (reported), a zero or subnormal for underflow
	// (kept, as encoding/json does).
	f, _ := strconv.ParseFloat(string(raw), 64)
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, probNotFinite
	}
	return f, ""
}
