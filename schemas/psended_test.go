package schemas

import (
	"strings"
	"testing"
)

func TestPsReplyEnded(t *testing.T) {
	good := `{"v":1,"host":"h","tasks":[],"ended":[{"task_id":"a#3.x","epoch":3,"kind":"done"}]}`
	r, err := DecodePsReply([]byte(good))
	if err != nil || len(r.Ended) != 1 || r.Ended[0].Kind != EventDone || r.Ended[0].Epoch != 3 {
		t.Fatalf("DecodePsReply(%s) = %+v, %v", good, r, err)
	}
	for _, tc := range []struct{ in, field string }{
		{`{"v":1,"host":"h","tasks":[],"ended":[{"task_id":"a","epoch":3,"kind":"vanished"}]}`, `"ended[0].kind"`},
		{`{"v":1,"host":"h","tasks":[],"ended":[{"task_id":"a","epoch":0,"kind":"done"}]}`, `"ended[0].epoch"`},
		{`{"v":1,"host":"h","tasks":[],"ended":[{"epoch":1,"kind":"done"}]}`, `"ended[0].task_id"`},
	} {
		if _, err := DecodePsReply([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("DecodePsReply(%s) = %v, want an error naming %s", tc.in, err, tc.field)
		}
	}
}

func TestPsReplyStarting(t *testing.T) {
	good := `{"v":1,"host":"h","tasks":[],"starting":[{"task_id":"a#2.x","epoch":2,"target":"a"}]}`
	r, err := DecodePsReply([]byte(good))
	if err != nil || len(r.Starting) != 1 || r.Starting[0] != (PsStarting{TaskID: "a#2.x", Epoch: 2, Target: "a"}) {
		t.Fatalf("DecodePsReply(%s) = %+v, %v", good, r, err)
	}
	for _, tc := range []struct{ in, field string }{
		{`{"v":1,"host":"h","tasks":[],"starting":[{"task_id":"a","epoch":0,"target":"a"}]}`, `"starting[0].epoch"`},
		{`{"v":1,"host":"h","tasks":[],"starting":[{"epoch":1,"target":"a"}]}`, `"starting[0].task_id"`},
		{`{"v":1,"host":"h","tasks":[],"starting":[{"task_id":"a","epoch":1}]}`, `"starting[0].target"`},
	} {
		if _, err := DecodePsReply([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("DecodePsReply(%s) = %v, want an error naming %s", tc.in, err, tc.field)
		}
	}
}
