package client_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestClientLinksNeitherSelectorNorServer: the client speaks the protocol
// alone; a program that uses it must not link the decision engine, the
// selector's service or the NATS server. `go list -deps .` leaves test
// dependencies out.
func TestClientLinksNeitherSelectorNorServer(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		switch {
		case dep == "github.com/taskselector/taskselector/selector",
			dep == "github.com/taskselector/taskselector/bus",
			strings.HasPrefix(dep, "github.com/nats-io/nats-server/"):
			t.Errorf("client links %s", dep)
		}
	}
}
