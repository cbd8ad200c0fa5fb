package schemas

import (
	"errors"
	"strings"
	"testing"
)

// TestHeartbeatFleetHelpersBothDecoders: fleet_helpers_mib is optional (an
// absent or null one is 0), bounded by MaxMiB, and read alike by the strict
// and the fast decoder; AppendHeartbeat writes it only when it is not 0.
func TestHeartbeatFleetHelpersBothDecoders(t *testing.T) {
	h := sampleHeartbeat()
	h.RAM.FleetHelpersMiB = 8192
	b := AppendHeartbeat(nil, &h)
	if !strings.Contains(string(b), `"fleet_helpers_mib":8192`) {
		t.Fatalf("AppendHeartbeat: %s", b)
	}
	h.RAM.FleetHelpersMiB = 0
	if b0 := AppendHeartbeat(nil, &h); strings.Contains(string(b0), "fleet_helpers") {
		t.Fatalf("AppendHeartbeat wrote a zero fleet_helpers_mib: %s", b0)
	}
	base := `{"v":1,"task_id":"t-1","epoch":1,"pid":2,"host":"h","target":"t","type":"x","seq":1,"sent_at":"2025-03-01T12:00:00Z","ram":`
	cases := []struct {
		ram     string
		want    int64
		problem string
	}{
		{`{"budget_mib":1,"used_mib":1}`, 0, ""},
		{`{"budget_mib":1,"used_mib":1,"fleet_helpers_mib":null}`, 0, ""},
		{`{"budget_mib":1,"fleet_helpers_mib":7,"used_mib":1}`, 7, ""},
		{`{"budget_mib":1,"used_mib":1,"fleet_helpers_mib":1099511627777}`, 0, "greater than 1099511627776"},
		{`{"budget_mib":1,"used_mib":1,"fleet_helpers_mib":-1}`, 0, "negative"},
		{`{"budget_mib":1,"used_mib":1,"fleet_helpers_mib":"7"}`, 0, "not"},
		{`{"budget_mib":1,"used_mib":1,"fleet_helpers_mib":3,"fleet_helpers_mib":null}`, 0, ""},
	}
	for _, c := range cases {
		msg := []byte(base + c.ram + "}")
		strict, serr := DecodeHeartbeat(msg)
		var fast Heartbeat
		ferr := DecodeHeartbeatInto(msg, &fast)
		if c.problem == "" {
			if serr != nil || ferr != nil || strict.RAM.FleetHelpersMiB != c.want || fast.RAM.FleetHelpersMiB != c.want {
				t.Errorf("%s: strict %v %d, fast %v %d, want %d", c.ram, serr, strict.RAM.FleetHelpersMiB, ferr, fast.RAM.FleetHelpersMiB, c.want)
			}
			continue
		}
		for _, err := range []error{serr, ferr} {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != "ram.fleet_helpers_mib" || !strings.Contains(fe.Problem, c.problem) {
				t.Errorf("%s: %v, want a FieldError on ram.fleet_helpers_mib (%s)", c.ram, err, c.problem)
			}
		}
	}
}

// TestAllocMessageRules checks the rules of the memory-manager messages
// that their schemas cannot express.
func TestAllocMessageRules(t *testing.T) {
	req := AllocRequest{V: 1, TaskID: "t-1", Epoch: 1, Target: "t", Host: "h", MiB: 10, MinMiB: 5}
	if err := req.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := req
	bad.MinMiB = 11
	wantField(t, bad.Validate(), "min_mib")
	bad = req
	bad.Release = []string{"a", ""}
	wantField(t, bad.Validate(), "release[1]")

	rep := AllocReply{V: 1, TaskID: "t-1", Grants: []HelperGrant{{HelperID: "h1", Host: "h", MiB: 3}},
		Error: &ReplyError{Code: CodeInsufficientRAM}}
	wantField(t, rep.Validate(), "grants")
	rep.Grants = nil
	rep.Held = []HelperGrant{{HelperID: "h1", Host: "", MiB: 3}}
	wantField(t, rep.Validate(), "held[0].host")
	rep.Held = nil
	rep.Error.Code = CodeDraining
	wantField(t, rep.Validate(), "error.code")

	hr := HelperRequest{V: 1, Op: HelperStop, HelperID: "h1", TaskID: "t-1", Epoch: 1, Target: "t"}
	if err := hr.Validate(); err != nil {
		t.Errorf("a stop without a type and task host: %v", err)
	}
	hr.Op = HelperStart
	wantField(t, hr.Validate(), "type")
	hr.Type = "w"
	wantField(t, hr.Validate(), "task_host")
	hr.Op = "pause"
	wantField(t, hr.Validate(), "op")

	hs := HostStatus{V: 1, Host: "h", Helpers: []HelperStatus{{HelperID: "h1", TaskID: "t-1", Epoch: 0, Target: "t"}}}
	wantField(t, hs.Validate(), "helpers[0].epoch")
}

func wantField(t *testing.T, err error, field string) {
	t.Helper()
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != field {
		t.Errorf("got %v, want a FieldError on %s", err, field)
	}
}
