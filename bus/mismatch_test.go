package bus

import (
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// TestPsReplyFromAnotherHost: a ps reply naming another host than the one
// asked is not believed: it is taken as unanswered and counted as a
// malformed ps reply and as a host mismatch.
func TestPsReplyFromAnotherHost(t *testing.T) {
	svc := NewSelectorService(&nats.Conn{}, ServiceConfig{}, testLog())
	ps := outCmd{kind: selector.CmdPs, host: "h1"}
	ev := svc.decodeReply(&ps, mustMarshal(t, &schemas.PsReply{V: schemas.Version, Host: "h2", Tasks: []schemas.PsTask{}}))
	if r, ok := ev.(*selector.PsUnanswered); !ok || r.Host != "h1" {
		t.Fatalf("reply event %#v, want PsUnanswered for h1", ev)
	}
	if got := svc.HostMismatches(); len(got) != 1 || got[SourcePsReply] != 1 {
		t.Fatalf("host mismatches %v, want ps_reply: 1", got)
	}
	var st schemas.SelectorStatus
	svc.mergeCounters(&st, nil)
	if st.Counters.MalformedMessages[SourcePsReply] != 1 || st.Counters.HostMismatches[SourcePsReply] != 1 {
		t.Fatalf("status counters %+v, want one malformed ps reply and one host mismatch", st.Counters)
	}
	// The right host's reply is believed and counts nothing more.
	ev = svc.decodeReply(&ps, mustMarshal(t, &schemas.PsReply{V: schemas.Version, Host: "h1", Tasks: []schemas.PsTask{}}))
	if _, ok := ev.(*selector.PsReplied); !ok {
		t.Fatalf("reply event %#v, want PsReplied", ev)
	}
	if got := svc.HostMismatches()[SourcePsReply]; got != 1 {
		t.Fatalf("host mismatches of ps replies = %d, want still 1", got)
	}
}
