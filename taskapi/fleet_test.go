package taskapi_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/taskapi"
	"github.com/taskselector/taskselector/taskapi/taskapitest"
)

// fleetFake is the Fake backend with fleet helper RAM: it grants what is
// asked until it holds cap MiB, then refuses insufficient_ram.
type fleetFake struct {
	*taskapitest.Fake
	cap int64

	mu   sync.Mutex
	held int64
	asks [][2]int64
}

func (f *fleetFake) RequestFleetHelpers(taskID string, mib, minMiB int64) (taskapi.FleetReply, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asks = append(f.asks, [2]int64{mib, minMiB})
	held := func() []schemas.HelperGrant {
		if f.held == 0 {
			return nil
		}
		return []schemas.HelperGrant{{HelperID: taskID + "/h", Host: "other", MiB: f.held}}
	}
	if f.held+minMiB > f.cap {
		return taskapi.FleetReply{}, &taskapi.Refusal{Code: schemas.CodeInsufficientRAM, Message: "no room"}
	}
	got := min(mib, f.cap-f.held)
	f.held += got
	var grants []schemas.HelperGrant
	if got > 0 {
		grants = []schemas.HelperGrant{{HelperID: taskID + "/h", Host: "other", MiB: got}}
	}
	return taskapi.FleetReply{FleetMiB: f.held, Grants: grants, Held: held()}, nil
}

// TestFleetHelpers: a task asks for fleet helper RAM through the explicit
// endpoint and gets the grants; a refusal comes back as a *Refusal with the
// selector's code; mib 0 reads what it holds.
func TestFleetHelpers(t *testing.T) {
	f := &fleetFake{Fake: taskapitest.NewFake(), cap: 300}
	token := f.AddTask("t1", 100)
	srv := taskapitest.Serve(t, f, f.Auth)
	task := newTask(t, srv.Path(), "t1", token)
	ctx := context.Background()

	rep, err := task.RequestFleetHelpers(ctx, 200, 50)
	if err != nil || rep.FleetMiB != 200 || len(rep.Grants) != 1 || rep.Grants[0].MiB != 200 || len(rep.Held) != 1 {
		t.Fatalf("first request: %+v, %v", rep, err)
	}
	_, err = task.RequestFleetHelpers(ctx, 200, 150)
	var r *taskapi.Refusal
	if !errors.As(err, &r) || r.Code != schemas.CodeInsufficientRAM {
		t.Fatalf("over the fleet's room: %v", err)
	}
	rep, err = task.RequestFleetHelpers(ctx, 0, 0)
	if err != nil || rep.FleetMiB != 200 || len(rep.Grants) != 0 || rep.Grants == nil {
		t.Fatalf("a read: %+v, %v", rep, err)
	}
	if _, err := task.RequestFleetHelpers(ctx, 5, 6); err == nil {
		t.Fatal("min_mib above mib accepted by the SDK")
	}
	// The local helper budget is untouched.
	if g, err := task.RequestHelpers(ctx, 100); err != nil || g != 100 {
		t.Fatalf("local helpers: %d, %v", g, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.asks) != 3 || f.asks[0] != [2]int64{200, 50} || f.asks[2] != [2]int64{0, 0} {
		t.Fatalf("backend asked %v", f.asks)
	}
}

// TestFleetHelpersUnsupported: an agent whose backend cannot ask the
// selector answers 404, as an agent from before the endpoint does.
func TestFleetHelpersUnsupported(t *testing.T) {
	f := taskapitest.NewFake()
	token := f.AddTask("t1", 100)
	srv := taskapitest.Serve(t, f, f.Auth)
	task := newTask(t, srv.Path(), "t1", token)
	_, err := task.RequestFleetHelpers(context.Background(), 10, 10)
	var ae *taskapi.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Fatalf("got %v, want a 404 APIError", err)
	}
}

func TestDecodeFleet(t *testing.T) {
	for body, want := range map[string]taskapi.FleetRequest{
		`{"mib":10}`:               {MiB: 10, MinMiB: 10},
		`{"mib":10,"min_mib":0}`:   {MiB: 10},
		`{"mib":0}`:                {},
		`{"mib":9,"min_mib":null}`: {MiB: 9, MinMiB: 9},
	} {
		if got, err := taskapi.DecodeFleet([]byte(body)); err != nil || got != want {
			t.Errorf("%s: %+v, %v", body, got, err)
		}
	}
	for _, body := range []string{`{}`, `{"mib":-1}`, `{"mib":1,"min_mib":2}`, `{"mib":1099511627777}`, `{"mib":1,"x":1}`, `{"mib":1.5}`} {
		if _, err := taskapi.DecodeFleet([]byte(body)); !errors.Is(err, taskapi.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", body, err)
		}
	}
}
