package workload

import (
	"math"

	"github.com/taskselector/taskselector/schemas"
)

// DemoLevel is the hacking level the demo and the early-game benchmark use.
// At level 100 every early-game target except silver-helix (level 150) can
// be harvested, so a dozen targets go through all three phases.
const DemoLevel = 100

// Game formula constants (see the hacking model reference).
const (
	growthBase     = 0.03               // growth log per thread is ln(1 + 0.03/sec) ...
	growthLogCap   = 0.0034938892542558 // ... capped at this, times growth/100
	hackDivisor    = 240                // money fraction per hack thread divisor
	chanceLevelMul = 1.75               // hack chance: (1.75 L - req) / (1.75 L)
)

// Server is a game server of the early-game world: a host when it has RAM,
// a target when it has money.
type Server struct {
	Name       string
	RAMGiB     int
	ReqLevel   int
	StartMoney float64
	MaxMoney   float64
	BaseSec    float64
	MinSec     float64
	Growth     float64
}

// EarlyGame returns the servers of a fresh game (the reference's table), in
// a new slice each call. CSEC's required level is random in the game (51-60);
// it is 55 here, and CSEC is a host only (no money).
func EarlyGame() []Server {
	return []Server{
		{"n00dles", 4, 1, 70e3, 1.75e6, 1, 1, 3000},
		{"foodnstuff", 16, 1, 2e6, 50e6, 10, 3, 5},
		{"sigma-cosmetics", 16, 5, 2.3e6, 57.5e6, 10, 3, 10},
		{"joesguns", 16, 10, 2.5e6, 62.5e6, 15, 5, 20},
		{"hong-fang-tea", 16, 30, 3e6, 75e6, 15, 5, 20},
		{"harakiri-sushi", 16, 40, 4e6, 100e6, 15, 5, 40},
		{"nectar-net", 16, 20, 2.75e6, 68.75e6, 20, 7, 25},
		{"neo-net", 32, 50, 5e6, 125e6, 25, 8, 25},
		{"zer0", 32, 75, 7.5e6, 187.5e6, 25, 8, 40},
		{"max-hardware", 32, 80, 10e6, 250e6, 15, 5, 30},
		{"iron-gym", 32, 100, 20e6, 500e6, 30, 10, 20},
		{"phantasy", 32, 100, 24e6, 600e6, 20, 7, 35},
		{"silver-helix", 64, 150, 45e6, 1.125e9, 30, 10, 30},
		{"CSEC", 8, 55, 0, 0, 1, 1, 1},
	}
}

// RAMMiB is the server's RAM as a host, in MiB.
func (s Server) RAMMiB() int64 { return int64(s.RAMGiB) * MiBPerGiB }

// IsTarget reports whether the server has money to work (CSEC does not).
func (s Server) IsTarget() bool { return s.MaxMoney > 0 }

// Hackable reports whether the server is a target that a player of the
// given hacking level can harvest.
func (s Server) Hackable(level int) bool { return s.IsTarget() && level >= s.ReqLevel }

// Metrics are the server's metrics in a fresh game for a player of the given
// hacking level: security at its base and money at its start value. The
// rates (growth log per thread, hack fraction, hack chance and hack time)
// are those at minimum security, where sow and harvest run; this is how the
// reference's worked sizes are computed, and it keeps them fixed over the
// target's lifecycle.
func (s Server) Metrics(level int) schemas.HackingMetrics {
	sec := s.MinSec
	L := float64(level)
	req := float64(s.ReqLevel)

	growth := growthLogCap
	if sec > 0 {
		growth = math.Min(math.Log1p(growthBase/sec), growthLogCap)
	}
	growth *= s.Growth / 100

	frac := 0.0
	if level >= s.ReqLevel && level > 0 {
		frac = (100 - sec) / 100 * (L - req + 1) / L / hackDivisor
	}

	chance := 0.0
	if level > 0 {
		chance = (chanceLevelMul*L - req) / (chanceLevelMul * L) * (100 - sec) / 100
	}

	hackS := 5 * (2.5*req*sec + 500) / (L + 50)

	return schemas.HackingMetrics{
		Security:              s.BaseSec,
		MinSecurity:           s.MinSec,
		Money:                 s.StartMoney,
		MaxMoney:              s.MaxMoney,
		GrowthLogPerThread:    clamp(growth, 0, math.MaxFloat64),
		HackFractionPerThread: clamp(frac, 0, 1),
		HackChance:            clamp(chance, 0, 1),
		HackTimeMS:            clamp(hackS*1000, 0, math.MaxFloat64),
	}
}

// Spec is the server as a target of the hacking profile.
func (s Server) Spec(level int) schemas.TargetSpec {
	m := s.Metrics(level)
	return schemas.TargetSpec{V: schemas.Version, Profile: schemas.ProfileHacking, Metrics: &m}
}

// clamp keeps x in [lo, hi]; NaN gives lo.
func clamp(x, lo, hi float64) float64 {
	if !(x >= lo) {
		return lo
	}
	return math.Min(x, hi)
}
