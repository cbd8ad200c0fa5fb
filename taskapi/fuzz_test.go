package taskapi

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
)

var fuzzSeeds = []string{
	``, `{}`, `null`, `[]`, `"x"`, `1`, `{"progress":0.5}`, `{"progress":1,"metrics":{"a":1,"b":"x","c":[1,{"d":true}],"e":null}}`,
	`{"progress":-0}`, `{"progress":1e-320}`, `{"progress":1e400}`, `{"progress":0.5,"metrics":{"a":-1}}`,
	`{"done":true}`, `{"done":false,"reason":"helpers_unavailable"}`, `{"done":true,"metrics":{"files":3}}`,
	`{"done":false,"reason":"a\u0000b"}`, `{"done":"true"}`, `{"mib":1}`, `{"mib":1099511627776}`, `{"mib":1099511627777}`,
	`{"mib":-1}`, `{"mib":1.0}`, `{"mib":"1"}`, `{"mib":1}{"mib":1}`, `{"mib":1,"mib":2}`, `{"MIB":3}`,
	`{"progress":0.5,"metrics":{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":1}}}}}}}}}`, "{\"progress\":0.5,\"metrics\":{\"\xff\":1}}",
	`{"mib":0}`, `{"mib":10,"min_mib":3}`, `{"mib":10,"min_mib":11}`, `{"mib":3,"min_mib":-1}`, `{"min_mib":1}`, `{"mib":1,"min_mib":null}`,
}

// FuzzDecoders feeds arbitrary bodies to every request decoder: none may
// panic, and whatever one accepts must satisfy the protocol's rules and
// survive a round trip through encoding/json.
func FuzzDecoders(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if p, err := DecodeProgress(data); err == nil {
			if math.IsNaN(p.Progress) || p.Progress < 0 || p.Progress > 1 {
				t.Fatalf("progress %v accepted", p.Progress)
			}
			if err := CheckMetrics(p.Metrics); err != nil {
				t.Fatalf("accepted bad metrics: %v", err)
			}
			roundTrip(t, p, DecodeProgress)
		} else if !errors.Is(err, ErrMalformed) {
			t.Fatalf("error not wrapping ErrMalformed: %v", err)
		}
		if r, err := DecodeFinish(data); err == nil {
			if r.Done != (r.Reason == "") || len(r.Reason) > MaxReasonBytes {
				t.Fatalf("finish %+v accepted", r)
			}
			if err := CheckMetrics(r.Metrics); err != nil {
				t.Fatalf("accepted bad metrics: %v", err)
			}
			roundTrip(t, r, DecodeFinish)
		} else if !errors.Is(err, ErrMalformed) {
			t.Fatalf("error not wrapping ErrMalformed: %v", err)
		}
		if h, err := DecodeHelpers(data); err == nil {
			if h.MiB <= 0 || h.MiB > 1<<40 {
				t.Fatalf("mib %d accepted", h.MiB)
			}
			roundTrip(t, h, DecodeHelpers)
		} else if !errors.Is(err, ErrMalformed) {
			t.Fatalf("error not wrapping ErrMalformed: %v", err)
		}
		if r, err := DecodeFleet(data); err == nil {
			if r.MiB < 0 || r.MiB > 1<<40 || r.MinMiB < 0 || r.MinMiB > r.MiB {
				t.Fatalf("fleet request %+v accepted", r)
			}
			roundTrip(t, r, DecodeFleet)
		} else if !errors.Is(err, ErrMalformed) {
			t.Fatalf("error not wrapping ErrMalformed: %v", err)
		}
	})
}

func roundTrip[T any](t *testing.T, v T, decode func([]byte) (T, error)) {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal %+v: %v", v, err)
	}
	w, err := decode(data)
	if err != nil {
		t.Fatalf("re-decoding %s: %v", data, err)
	}
	if !reflect.DeepEqual(v, w) {
		t.Fatalf("round trip changed %+v into %+v", v, w)
	}
}

// nopBackend accepts everything.
type nopBackend struct{}

func (nopBackend) Progress(string, float64, map[string]any) error { return nil }
func (nopBackend) Finish(string, Result) error                    { return nil }
func (nopBackend) RequestHelpers(string, int64) (int64, error)    { return 1, nil }
func (nopBackend) ReleaseHelpers(string, int64) (int64, error)    { return 0, nil }
func (nopBackend) RequestFleetHelpers(string, int64, int64) (FleetReply, error) {
	return FleetReply{}, nil
}

// FuzzHandler sends arbitrary bodies to every endpoint of a real Server's
// handler: each is answered 200 or a JSON error with a 4xx status, never a
// panic or a 500.
func FuzzHandler(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(uint8(0), []byte(s))
	}
	dir, err := tempSocketDir()
	if err != nil {
		f.Fatal(err)
	}
	defer removeAll(dir)
	s, err := NewServer(dir+"/api.sock", nopBackend{}, func(id, tok string) bool { return id == "t" && tok == "k" }, nil)
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	paths := []string{PathProgress, PathFinish, PathHelpersRequest, PathHelpersRelease, PathHelpersFleet}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		req := httptest.NewRequestWithContext(context.Background(), http.MethodPost, "http://x"+paths[int(which)%len(paths)], strings.NewReader(string(body)))
		req.Header.Set(HeaderTaskID, "t")
		req.Header.Set(HeaderAuthorization, "Bearer k")
		rec := httptest.NewRecorder()
		s.srv.Handler.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK && (rec.Code < 400 || rec.Code >= 500) {
			t.Fatalf("status %d for %q", rec.Code, body)
		}
		var e ErrorReply
		if rec.Code != http.StatusOK && (json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Code == "") {
			t.Fatalf("error reply not JSON: %q", rec.Body.String())
		}
	})
}

func TestCheckMetricsTypes(t *testing.T) {
	good := map[string]any{"i": 1, "i64": int64(2), "u": uint8(3), "f32": float32(1.5), "n": json.Number("4"), "s": "x", "b": true, "nil": nil, "l": []any{1, "a"}}
	if err := CheckMetrics(good); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]map[string]any{
		"neg int":   {"x": -1},
		"nan":       {"x": math.NaN()},
		"inf":       {"x": math.Inf(1)},
		"bad num":   {"x": json.Number("abc")},
		"type":      {"x": struct{}{}},
		"empty key": {"": 1},
		"many":      manyMetrics(MaxMetricsEntries + 1),
	} {
		if err := CheckMetrics(bad); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

func manyMetrics(n int) map[string]any {
	l := make([]any, n)
	for i := range l {
		l[i] = i
	}
	return map[string]any{"l": l}
}
