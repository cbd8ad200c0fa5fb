package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestWorkerLinksNeitherSelectorNorServer: the worker binary speaks the
// protocol alone; it must not link the decision engine, the selector's
// service or the NATS server.
func TestWorkerLinksNeitherSelectorNorServer(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		switch {
		case dep == "github.com/taskselector/taskselector/selector",
			dep == "github.com/taskselector/taskselector/bus",
			strings.HasPrefix(dep, "github.com/nats-io/nats-server/"):
			t.Errorf("cmd/worker links %s", dep)
		}
	}
}
