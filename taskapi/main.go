package taskapi

import (
	"context"
	"io"
	"log/slog"
	"os"
)

// Exit statuses of a task program, as the examples use them. The agent
// reads a task's outcome from what it reported (Done, Fail); these only
// keep the exit status consistent with it.
const (
	ExitDone               = 0
	ExitFailed             = 1
	ExitHelpersUnavailable = 2
	ExitSignalled          = 128 + 15 // stopped by SIGTERM or SIGINT
)

// FailFunc logs err, reports the task failed with reason (even once the
// task's context has ended) and returns code, for a program's
// `return fail(code, reason, err)`.
type FailFunc func(code int, reason string, err error) int

// Program describes a task program for Main.
type Program struct {
	// Name is the program's name in its log lines.
	Name string
	// HelperArg, when not empty, is the first argument with which the
	// program runs as one of its own helpers: Main then runs Helper on
	// stdin and stdout instead of Run.
	HelperArg string
	Helper    func(in io.Reader, out io.Writer) error
	// Run is the task's body, given the task, a logger that names the
	// task and a FailFunc; it returns the exit status.
	Run func(t *Task, log *slog.Logger, fail FailFunc) int
}

// Main is the main function of a task program: it runs p as a helper or as
// the task (connecting to its worker agent with FromEnv), and exits with the
// status that returns. It does not return.
func Main(p Program) {
	os.Exit(p.main(os.Args[1:], os.Stdin, os.Stdout, slog.New(slog.NewTextHandler(os.Stderr, nil))))
}

func (p Program) main(args []string, stdin io.Reader, stdout io.Writer, log *slog.Logger) int {
	if p.HelperArg != "" && len(args) > 0 && args[0] == p.HelperArg {
		if err := p.Helper(stdin, stdout); err != nil {
			log.Error(p.Name+" helper", "err", err)
			return ExitFailed
		}
		return ExitDone
	}
	t, err := FromEnv()
	if err != nil {
		log.Error(p.Name+": not started by a worker agent", "err", err)
		return ExitFailed
	}
	defer t.Close()
	log = log.With("task_id", t.ID)
	fail := func(code int, reason string, err error) int {
		log.Error(p.Name+" failed", "reason", reason, "err", err)
		if ferr := t.Fail(context.WithoutCancel(t.Context()), reason); ferr != nil {
			log.Error(p.Name+": reporting failure", "err", ferr)
		}
		return code
	}
	return p.Run(t, log, fail)
}
