package schemas

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/taskselector/taskselector/internal/strictjson"
)

// mibFields lists the paths, array indices written as [], of every RAM
// figure (a field named *_mib) in a Go message type.
func mibFields(t reflect.Type, prefix string, out *[]string) {
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice:
		if t.Kind() == reflect.Slice {
			prefix += "[]"
		}
		mibFields(t.Elem(), prefix, out)
	case reflect.Struct:
		if t == timeType {
			return
		}
		for _, f := range strictjson.Fields(t) {
			p := joinPath(prefix, f.Name)
			if strings.HasSuffix(f.Name, "_mib") {
				*out = append(*out, p)
				continue
			}
			mibFields(t.Field(f.Index).Type, p, out)
		}
	}
}

var arrayIndex = regexp.MustCompile(`\[\d+\]`)

// TestMiBFieldsBoundedInEveryMessage sets every RAM figure of every example
// to MaxMiB (accepted), MaxMiB+1 and MaxInt64-1 (refused with a FieldError
// naming the field, by the decoder and by Marshal). Issue 7, defect 4: two
// heartbeats with used_mib near MaxInt64 overflowed the selector's ledger.
func TestMiBFieldsBoundedInEveryMessage(t *testing.T) {
	for _, m := range allMessages {
		t.Run(m.name, func(t *testing.T) {
			var want []string
			mibFields(m.typ, "", &want)
			var covered []string
			for i, ex := range examples(t, m.name) {
				var paths [][]any
				jsonPaths(mustDecodeJSON(t, ex), nil, &paths)
				for _, p := range paths {
					ps := pathString(p)
					if !strings.HasSuffix(ps, "_mib") || strings.HasPrefix(ps, "args") {
						continue
					}
					covered = append(covered, arrayIndex.ReplaceAllString(ps, "[]"))

					at := mutate(t, ex, p, json.Number(strconv.FormatInt(MaxMiB, 10)), false)
					if _, err := m.decode(at); err != nil {
						var fe *FieldError
						if errors.As(err, &fe) && fe.Field == ps && strings.Contains(fe.Problem, "greater than") {
							t.Errorf("example %d with %s = MaxMiB: %v", i, ps, err)
						}
					}
					for _, v := range []int64{MaxMiB + 1, math.MaxInt64 - 1, math.MaxInt64} {
						b := mutate(t, ex, p, json.Number(strconv.FormatInt(v, 10)), false)
						msg, err := m.decode(b)
						var fe *FieldError
						if !errors.As(err, &fe) || fe.Message != m.name || fe.Field != ps || !strings.Contains(fe.Problem, "greater than 1099511627776") {
							t.Errorf("example %d with %s = %d: got %v (%v), want a FieldError naming %s", i, ps, v, err, msg, ps)
						}
						// Marshal refuses such a message too.
						ok, err := m.decode(ex)
						if err != nil {
							t.Fatal(err)
						}
						big := reflect.New(reflect.TypeOf(ok)).Elem()
						big.Set(reflect.ValueOf(ok))
						if err := json.Unmarshal(b, big.Addr().Interface()); err != nil {
							t.Fatal(err)
						}
						if _, err := Marshal(big.Interface().(Message)); err == nil || !strings.Contains(err.Error(), strconv.Quote(ps)) {
							t.Errorf("Marshal with %s = %d: %v", ps, v, err)
						}
					}
				}
			}
			slices.Sort(want)
			slices.Sort(covered)
			covered = slices.Compact(covered)
			if !slices.Equal(want, covered) {
				t.Errorf("RAM figures in the examples %v, in the Go type %v: every one needs an example", covered, want)
			}
		})
	}
}

// TestHeartbeatUsedMiBNearMaxInt64 is issue 7's defect 4 as the selector
// met it: a heartbeat whose used_mib is near MaxInt64 must be refused by
// both heartbeat decoders, so that two of them cannot overflow the ledger.
func TestHeartbeatUsedMiBNearMaxInt64(t *testing.T) {
	h := sampleHeartbeat()
	for _, used := range []int64{math.MaxInt64 - 1, math.MaxInt64 / 2, MaxMiB + 1} {
		h.RAM.UsedMiB = used
		b := AppendHeartbeat(nil, &h) // the fast path's key order
		want := `schemas: heartbeat: field "ram.used_mib": greater than 1099511627776`
		if _, err := DecodeHeartbeat(b); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("DecodeHeartbeat with used_mib %d: %v", used, err)
		}
		var fast Heartbeat
		if err := DecodeHeartbeatInto(b, &fast); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("DecodeHeartbeatInto with used_mib %d: %v", used, err)
		}
		if err := h.Validate(); err == nil {
			t.Errorf("Validate accepted used_mib %d", used)
		}
	}
	h.RAM.UsedMiB = MaxMiB
	var fast Heartbeat
	if err := DecodeHeartbeatInto(AppendHeartbeat(nil, &h), &fast); err != nil || fast.RAM.UsedMiB != MaxMiB {
		t.Errorf("used_mib = MaxMiB: %v", err)
	}
}
