package taskapi

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
)

func TestProgramRunsItsHelper(t *testing.T) {
	var ran bool
	p := Program{Name: "p", HelperArg: "helper",
		Helper: func(in io.Reader, out io.Writer) error {
			b, _ := io.ReadAll(in)
			_, err := out.Write(bytes.ToUpper(b))
			return err
		},
		Run: func(*Task, *slog.Logger, FailFunc) int { ran = true; return ExitDone },
	}
	var out bytes.Buffer
	if code := p.main([]string{"helper"}, strings.NewReader("abc"), &out, slog.New(slog.DiscardHandler)); code != ExitDone || out.String() != "ABC" || ran {
		t.Fatalf("helper: code %d, out %q, body ran %v", code, out.String(), ran)
	}
	p.Helper = func(io.Reader, io.Writer) error { return errors.New("broken") }
	if code := p.main([]string{"helper"}, strings.NewReader(""), io.Discard, slog.New(slog.DiscardHandler)); code != ExitFailed {
		t.Fatalf("failing helper: code %d", code)
	}
}

func TestProgramOutsideAnAgentFails(t *testing.T) {
	for _, k := range []string{EnvTaskID, EnvTaskAPI, EnvTaskToken} {
		t.Setenv(k, "")
	}
	var ran bool
	p := Program{Name: "p", Run: func(*Task, *slog.Logger, FailFunc) int { ran = true; return ExitDone }}
	var logs bytes.Buffer
	if code := p.main(nil, strings.NewReader(""), io.Discard, slog.New(slog.NewTextHandler(&logs, nil))); code != ExitFailed || ran {
		t.Fatalf("outside an agent: code %d, body ran %v", code, ran)
	}
	if !strings.Contains(logs.String(), "not started by a worker agent") {
		t.Fatalf("log %q", logs.String())
	}
}
