package protocol

import "testing"

func TestEventSubjects(t *testing.T) {
	s := NewSubjects("")
	if got, want := s.TaskEvent("h.1", "a b"), "tasks.event.=aC4x.=YSBi"; got != want {
		t.Fatalf("TaskEvent = %q, want %q", got, want)
	}
	for _, tc := range []struct{ subject, host, target string }{
		{s.TaskEvent("h.1", "a b"), "h.1", "a b"},
		{s.Event("n00dles"), "", "n00dles"}, // the first version's form
	} {
		h, tg, err := s.ParseEvent(tc.subject)
		if err != nil || h != tc.host || tg != tc.target {
			t.Fatalf("ParseEvent(%q) = %q, %q, %v; want %q, %q", tc.subject, h, tg, err, tc.host, tc.target)
		}
	}
	for _, bad := range []string{"tasks.event.", "tasks.event.h.t.x", "other.event.t", "tasks.event.h.==", "tasks.event.==", "tasks.heartbeat.h.t"} {
		if _, _, err := s.ParseEvent(bad); err == nil {
			t.Errorf("ParseEvent(%q) succeeded", bad)
		}
	}
	if got, want := WorkerInbox("h.1"), "_INBOX.worker.=aC4x"; got != want {
		t.Fatalf("WorkerInbox = %q, want %q", got, want)
	}
}

func FuzzParseEvent(f *testing.F) {
	s := NewSubjects("")
	for _, sub := range []string{s.TaskEvent("h", "I.I.I.I"), s.Event("t"), "tasks.event.h.t.u", "tasks.event..", "tasksx.event.h.t", ""} {
		f.Add(sub)
	}
	f.Fuzz(func(t *testing.T, subject string) {
		host, target, err := s.ParseEvent(subject)
		if err != nil {
			return
		}
		// Whatever parses is exactly the subject of its host and target,
		// in the form it came in.
		want := s.TaskEvent(host, target)
		if host == "" {
			want = s.Event(target)
		}
		if want != subject {
			t.Fatalf("ParseEvent(%q) = %q, %q, which builds %q", subject, host, target, want)
		}
	})
}
