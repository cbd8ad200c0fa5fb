// Package strictjson decodes JSON into Go structs under strict rules, in one
// pass and with few allocations. It knows nothing of any message format: its
// callers add their own size limits and semantic checks. Its Scanner, with
// ParseUint, ParseFloat and Unescape, serves hand-written decoders that must
// judge input exactly as Decode does.
//
// The rules of Decode:
//   - the input is valid JSON, as encoding/json judges it, whose top level
//     is an object; arrays and objects nest at most MaxDepth deep;
//   - a struct field is read from the member its json tag names; fields
//     without a json tag, tagged "-", or unexported are not decoded; keys
//     match exactly (case-sensitive);
//   - a field whose json tag lacks omitempty is required: a missing key is
//     an error; null is accepted (as nil) only for pointer, slice and map
//     fields, and is an error for other required fields;
//   - a null optional field is the same as an absent one;
//   - unknown keys are ignored; of duplicate keys the last one counts;
//   - integer fields (int, int64, uint64) take JSON integers without
//     fraction or exponent, never negative, within the Go type's range;
//     "-0" is zero;
//   - float64 fields take finite JSON numbers (1e400 is an error);
//   - string fields must be valid UTF-8; time.Time fields take RFC 3339
//     strings, returned in UTC;
//   - slices ([]T) take arrays, maps with string keys (map[string]T) take
//     objects; neither may hold null, and an empty one decodes as empty,
//     not nil;
//   - map[string]any fields take any JSON object (free-form), decoded by
//     encoding/json, whose numbers must be finite.
//
// Problems are reported in a fixed order, whatever the order of the input:
// a syntax error anywhere comes first (the whole input is always scanned);
// then, for a struct, its fields in declaration order, each field being
// either missing, null where null is not allowed, or the first problem inside
// its value (array elements by index, map entries by key). Of duplicate keys
// the last one counts, problems included.
//
// Decode supports the field types listed above, named or not, and pointers
// to them; Check reports, without decoding anything, whether a struct type
// is supported, so that a test can catch an unsupported type before any
// input does.
package strictjson
