package schemas

import (
	"fmt"
	"strconv"

	"github.com/taskselector/taskselector/internal/strictjson"
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

// Problems shared by the decoders and Validate methods; those the decoders
// report are strictjson's, so that DecodeHeartbeatInto, which is written by
// hand, words them as the generic decoder does.
const (
	probMissing     = strictjson.ProblemMissing
	probNull        = strictjson.ProblemNull
	probNegative    = strictjson.ProblemNegative
	probNotFinite   = strictjson.ProblemNotFinite
	probOutOfRange  = strictjson.ProblemOutOfRange
	probNotNumber   = strictjson.ProblemNotNumber
	probNotString   = strictjson.ProblemNotString
	probNotObject   = strictjson.ProblemNotObject
	probNotTime     = strictjson.ProblemNotTime
	probBadUTF8     = strictjson.ProblemBadUTF8
	probNotJSONObj  = strictjson.ProblemNotJSONObject
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
