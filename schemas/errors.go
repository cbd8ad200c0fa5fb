package schemas

import (
	"fmt"
	"strconv"
)

// FieldError is the error every decoder and Validate method returns. It names
// the message, the offending field (a dotted path such as "ram.used_mib" or
// "tasks[2].pid"; empty when the problem concerns the whole message, such as
// its size or its JSON syntax) and the problem.
//
// Check for it with errors.As:
//
//	var fe *schemas.FieldError
//	if errors.As(err, &fe) { ... fe.Field ... }
type FieldError struct {
	Message string // message name, e.g. "heartbeat"
	Field   string // dotted field path, e.g. "ram.used_mib"; "" for the whole message
	Problem string // what is wrong, e.g. "negative" or "missing"
}

// Error formats the error as `schemas: heartbeat: field "ram.used_mib": negative`.
func (e *FieldError) Error() string {
	if e.Field == "" {
		return "schemas: " + e.Message + ": " + e.Problem
	}
	return "schemas: " + e.Message + ": field " + strconv.Quote(e.Field) + ": " + e.Problem
}

// Problems shared by the decoders and Validate methods.
const (
	probMissing     = "missing"
	probNull        = "null"
	probNegative    = "negative"
	probNotFinite   = "not finite"
	probOutOfRange  = "out of range"
	probNotInteger  = "not an integer"
	probNotNumber   = "not a number"
	probNotString   = "not a string"
	probNotBool     = "not a boolean"
	probNotObject   = "not an object"
	probNotArray    = "not an array"
	probNotTime     = "not an RFC 3339 time"
	probBadUTF8     = "invalid UTF-8"
	probEmpty       = "empty"
	probNotPositive = "must be at least 1"
)

func fieldErr(msg, field, problem string) *FieldError {
	return &FieldError{Message: msg, Field: field, Problem: problem}
}

func tooLarge(msg string, n, limit int) *FieldError {
	return &FieldError{Message: msg, Problem: fmt.Sprintf("message is %d bytes, over the %d-byte limit", n, limit)}
}

// joinPath appends a field name to a path.
func joinPath(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// indexPath appends an array index to a path.
func indexPath(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}
