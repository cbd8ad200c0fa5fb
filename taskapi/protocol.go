package taskapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/taskselector/taskselector/schemas"
)

// Paths of the task API's endpoints. All take POST.
const (
	PathProgress       = "/v1/progress"
	PathFinish         = "/v1/finish"
	PathHelpersRequest = "/v1/helpers/request"
	PathHelpersRelease = "/v1/helpers/release"
)

// Header names. The token goes in Authorization as "Bearer <token>".
const (
	HeaderTaskID        = "Task-Id"
	HeaderAuthorization = "Authorization"
)

// Limits of the protocol.
const (
	// MaxBodyBytes is the largest request body the server reads.
	MaxBodyBytes = 64 << 10
	// MaxTokenBytes is the longest token the server accepts.
	MaxTokenBytes = 1024
	// MaxReasonBytes is the longest failure reason.
	MaxReasonBytes = 256
	// MaxMetricsDepth is how deeply metrics may nest objects and arrays
	// (the metrics object itself is depth 1).
	MaxMetricsDepth = 8
	// MaxMetricsEntries is the most values (counting nested ones) that one
	// metrics object may hold.
	MaxMetricsEntries = 512
	// MaxMetricKeyBytes is the longest key in metrics.
	MaxMetricKeyBytes = 256
)

// Error codes of the API's error replies. Refusals carry their own codes
// (CodeOverBudget and the like) with status 409.
const (
	CodeBadRequest           = "bad_request"
	CodeUnauthorized         = "unauthorized"
	CodeForbidden            = "forbidden"
	CodeNotFound             = "not_found"
	CodeMethodNotAllowed     = "method_not_allowed"
	CodeTooLarge             = "too_large"
	CodeUnsupportedMediaType = "unsupported_media_type"
	CodeInternal             = "internal"
)

// Refusal codes a Backend may use (others are allowed).
const (
	// CodeOverBudget: the grant would take the task past its helper budget.
	CodeOverBudget = "over_budget"
	// CodeNoHostRAM: the host has not enough free RAM for the grant.
	CodeNoHostRAM = "no_host_ram"
	// CodeUnknownTask: the agent does not run this task (any more).
	CodeUnknownTask = "unknown_task"
	// CodeNotGranted: a release of more helper RAM than is granted.
	CodeNotGranted = "not_granted"
	// CodeFinished: the task already said it is done or failed.
	CodeFinished = "finished"
	// CodeRefused is used for a Refusal that carries no code.
	CodeRefused = "refused"
)

// Refusal is a Backend's clear "no": the request was well formed but cannot
// be granted, for instance a helper RAM request over the budget. The server
// answers it with status 409 and {"code", "message"}; the SDK returns it as
// a *Refusal, so a task can test for it with errors.As.
type Refusal struct {
	// Code is a short machine-readable reason, such as CodeOverBudget.
	Code string
	// Message explains the refusal to a human.
	Message string
}

// Error implements error.
func (r *Refusal) Error() string {
	if r.Message == "" {
		return "taskapi: refused: " + r.Code
	}
	return "taskapi: refused: " + r.Code + ": " + r.Message
}

// APIError is an error reply of the task API other than a refusal: bad
// input, failed authentication or a backend failure.
type APIError struct {
	// Status is the HTTP status code.
	Status int
	// Code is the reply's error code, such as CodeBadRequest.
	Code string
	// Message explains the error.
	Message string
}

// Error implements error.
func (e *APIError) Error() string {
	return fmt.Sprintf("taskapi: status %d: %s: %s", e.Status, e.Code, e.Message)
}

// Result is what a task reports at its end through /v1/finish.
type Result struct {
	// Done is true when the task did its work, false when it failed.
	Done bool
	// Metrics are the task's figures (optional, allowed either way).
	Metrics map[string]any
	// Reason says why a failed task failed (such as
	// schemas.ReasonHelpersUnavailable); empty when Done.
	Reason string
}

// ProgressRequest is the body of POST /v1/progress.
type ProgressRequest struct {
	// Progress is the share of the work done, in [0, 1].
	Progress float64 `json:"progress"`
	// Metrics are optional figures; every number in them must be finite
	// and not negative.
	Metrics map[string]any `json:"metrics,omitempty"`
}

// FinishRequest is the body of POST /v1/finish.
type FinishRequest struct {
	// Done is true for done, false for failed.
	Done bool `json:"done"`
	// Metrics are optional figures.
	Metrics map[string]any `json:"metrics,omitempty"`
	// Reason is required when Done is false and must be empty otherwise.
	Reason string `json:"reason,omitempty"`
}

// HelpersRequest is the body of POST /v1/helpers/request and
// /v1/helpers/release.
type HelpersRequest struct {
	// MiB is the helper RAM to request or release, a positive integer.
	MiB int64 `json:"mib"`
}

// OKReply is the reply to /v1/progress and /v1/finish.
type OKReply struct {
	// OK is always true.
	OK bool `json:"ok"`
}

// HelpersReply is the reply to /v1/helpers/request and /v1/helpers/release.
type HelpersReply struct {
	// GrantedMiB is the task's helper RAM granted in total after the call.
	GrantedMiB int64 `json:"granted_mib"`
}

// ErrorReply is the body of every error reply.
type ErrorReply struct {
	// Code is a machine-readable error or refusal code.
	Code string `json:"code"`
	// Message explains the error.
	Message string `json:"message"`
}

// ErrMalformed is wrapped by every error of the request decoders.
var ErrMalformed = errors.New("malformed request")

func malformed(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, a...))
}

// wire forms with pointers, so that a missing required field is seen.
type progressWire struct {
	Progress *float64       `json:"progress"`
	Metrics  map[string]any `json:"metrics"`
}

type finishWire struct {
	Done    *bool          `json:"done"`
	Metrics map[string]any `json:"metrics"`
	Reason  *string        `json:"reason"`
}

type helpersWire struct {
	MiB *int64 `json:"mib"`
}

// decodeStrict decodes exactly one JSON object from data into v. The
// object's keys must be among fields, spelt exactly (encoding/json alone
// would match them case-insensitively) and not repeated; trailing data is
// refused.
func decodeStrict(data []byte, v any, fields ...string) error {
	if len(data) > MaxBodyBytes {
		return malformed("body longer than %d bytes", MaxBodyBytes)
	}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return malformed("empty body")
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return malformed("body is not a JSON object")
	}
	seen := make(map[string]bool, len(fields))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return malformed("%v", err)
		}
		key, _ := tok.(string)
		if !slices.Contains(fields, key) {
			return malformed("unknown field %q", key)
		}
		if seen[key] {
			return malformed("field %q repeated", key)
		}
		seen[key] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return malformed("%s: %v", key, err)
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return malformed("%v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return malformed("trailing data after the JSON object")
	}
	if err := json.Unmarshal(trimmed, v); err != nil {
		return malformed("%v", err)
	}
	return nil
}

// DecodeProgress strictly decodes a /v1/progress body. progress is required
// and must be in [0, 1]; metrics are checked with CheckMetrics.
func DecodeProgress(data []byte) (ProgressRequest, error) {
	var w progressWire
	if err := decodeStrict(data, &w, "progress", "metrics"); err != nil {
		return ProgressRequest{}, err
	}
	if w.Progress == nil {
		return ProgressRequest{}, malformed("progress: missing")
	}
	if err := checkProgress(*w.Progress); err != nil {
		return ProgressRequest{}, malformed("%v", err)
	}
	if err := CheckMetrics(w.Metrics); err != nil {
		return ProgressRequest{}, malformed("%v", err)
	}
	return ProgressRequest{Progress: *w.Progress, Metrics: nilIfEmpty(w.Metrics)}, nil
}

// DecodeFinish strictly decodes a /v1/finish body. done is required; a
// failed finish (done false) needs a reason, a done one must not have one.
func DecodeFinish(data []byte) (FinishRequest, error) {
	var w finishWire
	if err := decodeStrict(data, &w, "done", "metrics", "reason"); err != nil {
		return FinishRequest{}, err
	}
	if w.Done == nil {
		return FinishRequest{}, malformed("done: missing")
	}
	r := FinishRequest{Done: *w.Done, Metrics: nilIfEmpty(w.Metrics)}
	if w.Reason != nil {
		r.Reason = *w.Reason
	}
	if err := checkFinish(r.Done, r.Reason); err != nil {
		return FinishRequest{}, malformed("%v", err)
	}
	if err := CheckMetrics(r.Metrics); err != nil {
		return FinishRequest{}, malformed("%v", err)
	}
	return r, nil
}

// DecodeHelpers strictly decodes a /v1/helpers/request or
// /v1/helpers/release body: mib is required, an integer in
// [1, schemas.MaxMiB].
func DecodeHelpers(data []byte) (HelpersRequest, error) {
	var w helpersWire
	if err := decodeStrict(data, &w, "mib"); err != nil {
		return HelpersRequest{}, err
	}
	if w.MiB == nil {
		return HelpersRequest{}, malformed("mib: missing")
	}
	n := *w.MiB
	if err := checkMiB(n); err != nil {
		return HelpersRequest{}, malformed("%v", err)
	}
	return HelpersRequest{MiB: n}, nil
}

// nilIfEmpty returns nil for an empty map (an absent, null and empty
// metrics object all decode to nil).
func nilIfEmpty(m map[string]any) map[string]any {
	if len(m) == 0 {
		return nil
	}
	return m
}

func checkProgress(p float64) error {
	if math.IsNaN(p) || p < 0 || p > 1 {
		return fmt.Errorf("progress: %v not in [0, 1]", p)
	}
	return nil
}

func checkMiB(n int64) error {
	switch {
	case n <= 0:
		return fmt.Errorf("mib: %d not positive", n)
	case n > schemas.MaxMiB:
		return fmt.Errorf("mib: %d greater than %d", n, int64(schemas.MaxMiB))
	}
	return nil
}

func checkFinish(done bool, reason string) error {
	switch {
	case done && reason != "":
		return errors.New("reason: must be empty when done is true")
	case !done && reason == "":
		return errors.New("reason: missing (required when done is false)")
	case len(reason) > MaxReasonBytes:
		return fmt.Errorf("reason: longer than %d bytes", MaxReasonBytes)
	case !utf8.ValidString(reason):
		return errors.New("reason: not valid UTF-8")
	case strings.IndexFunc(reason, unicode.IsControl) >= 0:
		return errors.New("reason: contains control characters")
	}
	return nil
}

// CheckMetrics checks free-form metrics the way the task API does: every
// number finite and not negative (as schemas.TaskEvent requires), values
// nested at most MaxMetricsDepth deep, at most MaxMetricsEntries values in
// all, keys non-empty, valid UTF-8 and at most MaxMetricKeyBytes long.
// Values may be nil, bools, strings, numbers (any Go integer or float type,
// or json.Number), map[string]any and []any. A nil map is valid.
func CheckMetrics(m map[string]any) error {
	entries := 0
	return checkMetricValue("metrics", m, 1, &entries)
}

func checkMetricValue(path string, v any, depth int, entries *int) error {
	switch x := v.(type) {
	case nil, bool, string:
		return nil
	case float64:
		return checkMetricNumber(path, x)
	case float32:
		return checkMetricNumber(path, float64(x))
	case int:
		return checkMetricNumber(path, float64(x))
	case int8:
		return checkMetricNumber(path, float64(x))
	case int16:
		return checkMetricNumber(path, float64(x))
	case int32:
		return checkMetricNumber(path, float64(x))
	case int64:
		return checkMetricNumber(path, float64(x))
	case uint, uint8, uint16, uint32, uint64, uintptr:
		return nil
	case json.Number:
		f, err := x.Float64()
		if err != nil {
			return fmt.Errorf("%s: not a number: %q", path, x.String())
		}
		return checkMetricNumber(path, f)
	case map[string]any:
		if depth > MaxMetricsDepth {
			return fmt.Errorf("%s: nested deeper than %d", path, MaxMetricsDepth)
		}
		for k, e := range x {
			switch {
			case k == "":
				return fmt.Errorf("%s: empty key", path)
			case len(k) > MaxMetricKeyBytes:
				return fmt.Errorf("%s: key longer than %d bytes", path, MaxMetricKeyBytes)
			case !utf8.ValidString(k):
				return fmt.Errorf("%s: key not valid UTF-8", path)
			}
			if *entries++; *entries > MaxMetricsEntries {
				return fmt.Errorf("metrics: more than %d values", MaxMetricsEntries)
			}
			if err := checkMetricValue(path+"."+k, e, depth+1, entries); err != nil {
				return err
			}
		}
		return nil
	case []any:
		if depth > MaxMetricsDepth {
			return fmt.Errorf("%s: nested deeper than %d", path, MaxMetricsDepth)
		}
		for i, e := range x {
			if *entries++; *entries > MaxMetricsEntries {
				return fmt.Errorf("metrics: more than %d values", MaxMetricsEntries)
			}
			if err := checkMetricValue(fmt.Sprintf("%s[%d]", path, i), e, depth+1, entries); err != nil {
				return err
			}
		}
		return nil
	default:
		return fmt.Errorf("%s: unsupported type %T", path, v)
	}
}

func checkMetricNumber(path string, f float64) error {
	switch {
	case math.IsNaN(f) || math.IsInf(f, 0):
		return fmt.Errorf("%s: not finite", path)
	case f < 0:
		return fmt.Errorf("%s: %v is negative", path, f)
	}
	return nil
}
