package protocol_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestProtocolSpeakersStayLight: the worker and the client speak the
// protocol alone; neither may link the decision engine, the selector's
// service or the NATS server. `go list -deps` leaves test dependencies out.
func TestProtocolSpeakersStayLight(t *testing.T) {
	for _, pkg := range []string{"../cmd/worker", "../client"} {
		out, err := exec.Command("go", "list", "-deps", pkg).Output()
		if err != nil {
			t.Skipf("go list %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			switch {
			case dep == "github.com/taskselector/taskselector/selector",
				dep == "github.com/taskselector/taskselector/bus",
				strings.HasPrefix(dep, "github.com/nats-io/nats-server/"):
				t.Errorf("%s links %s", pkg, dep)
			}
		}
	}
}
