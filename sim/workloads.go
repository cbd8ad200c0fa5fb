package sim

import (
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/workload"
)

// Workload names.
const (
	WorkloadEarlyGame = "early-game"
	WorkloadFleet     = "fleet"
)

// EarlyGameLevels are the early-game benchmark's total RAM levels, in GiB.
var EarlyGameLevels = []int{8, 16, 32, 64, 128, 256, 1024}

// FleetLevels are the fleet benchmark's RAM levels, in percent of the RAM
// its full-size tasks need.
var FleetLevels = []float64{5, 10, 25, 50, 100}

// PurchasedServerGiB is the size of the servers bought once the early-game
// world's own hosts are all in use.
const PurchasedServerGiB = 64

// HomeGiB is the RAM of the player's home server in a fresh game.
const HomeGiB = 8

// EarlyGameHosts spreads totalGiB of RAM over hosts the way a fresh game
// does: home (8 GiB) first, then the world's servers with RAM in the order
// the player gains them (required hacking level, then the table's order),
// then purchased servers of 64 GiB. The host where the total is reached
// keeps the rest of its RAM busy with foreign use (the player's own
// scripts), so that exactly totalGiB is offered to tasks on hosts of the
// game's sizes.
func EarlyGameHosts(totalGiB int) []Host {
	servers := workload.EarlyGame()
	slices.SortStableFunc(servers, func(a, b workload.Server) int { return a.ReqLevel - b.ReqLevel })
	sizes := []Host{{Name: "home", CapacityMiB: HomeGiB * workload.MiBPerGiB}}
	for _, s := range servers {
		if s.RAMGiB > 0 {
			sizes = append(sizes, Host{Name: s.Name, CapacityMiB: s.RAMMiB()})
		}
	}
	want := int64(totalGiB) * workload.MiBPerGiB
	var hosts []Host
	var have int64
	for i := 0; have < want; i++ {
		var h Host
		if i < len(sizes) {
			h = sizes[i]
		} else {
			h = Host{Name: "pserv-" + strconv.Itoa(i-len(sizes)), CapacityMiB: PurchasedServerGiB * workload.MiBPerGiB}
		}
		if rest := want - have; h.CapacityMiB > rest {
			h.ForeignMiB = h.CapacityMiB - rest
		}
		have += h.CapacityMiB - h.ForeignMiB
		hosts = append(hosts, h)
	}
	return hosts
}

// EarlyGameTargets are the early-game servers a player of the demo level
// can harvest (a dozen), as hacking targets in a fresh game.
func EarlyGameTargets() []Target {
	var ts []Target
	for _, s := range workload.EarlyGame() {
		if s.Hackable(workload.DemoLevel) {
			ts = append(ts, Target{Name: s.Name, Spec: s.Spec(workload.DemoLevel)})
		}
	}
	return ts
}

// EarlyGame is the early-game world with totalGiB of RAM.
func EarlyGame(totalGiB int) World {
	return World{
		Name:    fmt.Sprintf("%s/%dGiB", WorkloadEarlyGame, totalGiB),
		Hosts:   EarlyGameHosts(totalGiB),
		Targets: EarlyGameTargets(),
	}
}

// FleetClass is one size of task in the fleet workload.
type FleetClass struct {
	Name     string
	FullMiB  int64   // helpers of the repeating serve phase at full size
	PrepS    float64 // work of the prep phase (helpers half the serve's)
	ServeS   float64 // work of one serve cycle
	Count    int     // targets of this class
	MinShare int64   // minimum helpers = full / MinShare
}

// FleetClasses is the fleet workload's mix: small, medium and large tasks.
var FleetClasses = []FleetClass{
	{Name: "small", FullMiB: 512, PrepS: 20, ServeS: 30, Count: 32, MinShare: 4},
	{Name: "medium", FullMiB: 2048, PrepS: 30, ServeS: 60, Count: 32, MinShare: 4},
	{Name: "large", FullMiB: 6144, PrepS: 60, ServeS: 120, Count: 32, MinShare: 4},
}

// FleetWrapperMiB is the wrapper of every fleet task.
const FleetWrapperMiB = 64

// FleetHostMiB is the size of a fleet host.
const FleetHostMiB = 8 * workload.MiBPerGiB

// FleetTargets are the fleet workload's declared targets: per class, a prep
// phase (half the helpers, once) and a serve phase that repeats.
func FleetTargets() []Target {
	var ts []Target
	for _, c := range FleetClasses {
		for i := 0; i < c.Count; i++ {
			half := c.FullMiB / 2
			spec := schemas.TargetSpec{V: schemas.Version, Profile: schemas.ProfileDeclared, Phases: []schemas.Phase{
				{Type: "prep", WrapperMiB: FleetWrapperMiB, HelpersMinMiB: max(half/c.MinShare, 1), HelpersFullMiB: half, WorkS: c.PrepS},
				{Type: "serve", WrapperMiB: FleetWrapperMiB, HelpersMinMiB: max(c.FullMiB/c.MinShare, 1), HelpersFullMiB: c.FullMiB,
					WorkS: c.ServeS, Repeat: true},
			}}
			ts = append(ts, Target{Name: fmt.Sprintf("%s-%02d", c.Name, i), Spec: spec})
		}
	}
	return ts
}

// FullDemandMiB is the RAM every target's largest full-size task needs at
// once (wrapper + full helpers of its largest phase), summed over targets.
func FullDemandMiB(params workload.Params, targets []Target) int64 {
	var n int64
	for _, t := range targets {
		var most int64
		phases := []string{workload.PhaseTill, workload.PhaseSow, workload.PhaseHarvest}
		if t.Spec.Profile == schemas.ProfileDeclared {
			phases = phases[:0]
			for _, p := range t.Spec.Phases {
				phases = append(phases, p.Type)
			}
		}
		for _, ph := range phases {
			if est, err := params.Estimate(&t.Spec, ph); err == nil {
				most = max(most, est.FullMiB())
			}
		}
		n += most
	}
	return n
}

// Fleet is the fleet world with pct percent of the RAM its full-size tasks
// need, on 8 GiB hosts (the last one partly held by foreign use).
func Fleet(pct float64) World {
	targets := FleetTargets()
	want := int64(math.Round(float64(FullDemandMiB(workload.DefaultParams(), targets)) * pct / 100))
	var hosts []Host
	var have int64
	for i := 0; have < want; i++ {
		h := Host{Name: "node-" + strconv.Itoa(i), CapacityMiB: FleetHostMiB}
		if rest := want - have; h.CapacityMiB > rest {
			h.ForeignMiB = h.CapacityMiB - rest
		}
		have += h.CapacityMiB - h.ForeignMiB
		hosts = append(hosts, h)
	}
	return World{Name: fmt.Sprintf("%s/%g%%", WorkloadFleet, pct), Hosts: hosts, Targets: targets}
}
