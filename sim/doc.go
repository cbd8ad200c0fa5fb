// Package sim is taskselector's deterministic cluster simulator. It drives a
// launch policy — the real selector engine (selector.Engine), the naive
// policy the selector replaces (Naive), or any other Policy — in virtual
// time, with no NATS, no wall clock and no goroutines, so that hours of
// cluster time run in seconds and the same seed gives the same result.
//
// # Model
//
// The simulator plays the selector's edge and every worker at once. A
// discrete-event loop takes events from a time-ordered queue (container/heap;
// ties are broken by insertion order, so runs are reproducible):
//
//   - Ticks reach the policy every Config.Tick (100 ms).
//   - Hosts have a RAM capacity and foreign use (RAM held by processes the
//     policy does not own). Each publishes a HostStatus every
//     Config.StatusInterval, the first at a staggered offset within the first
//     interval.
//   - Launch, ps and kill commands travel to the host's worker and their
//     replies back, each way after Config.Latency (± Config.Jitter). Each
//     message is lost with probability Config.LossProb; a request with no
//     reply by Config.ReplyTimeout is reported to the policy as unanswered,
//     as the NATS edge does. Task events go through a stream and are never
//     lost.
//   - A worker admits a launch like the real worker (package worker): it
//     refuses it with insufficient_ram when wrapper + helpers_mib does not fit
//     the capacity minus foreign use minus every task counted at the larger of
//     its budget and its use. A started task (a wrapper) sends its first
//     heartbeat at once and then one every Config.HeartbeatInterval.
//     Config.HelperDelay after the start its helpers take the RAM the model
//     uses (workload.Run.UsedMiB, at most helpers_mib) from the host's free
//     RAM; when the host does not have it, the task fails with
//     helpers_unavailable. A launch with helpers_mib 0 is a task that sizes
//     itself: it asks for the phase's full helpers after it starts (that is
//     the naive policy's launch, which only books the wrapper).
//   - A task's progress is workload.Run, the model the worker's sim executor
//     uses too: each heartbeat advances it, and it reports done (with the
//     target's new metrics, for the hacking profile) when the run is done.
//     The simulator owns the true state of every target: a hacking task
//     starts from the target's current metrics, whatever the policy believes,
//     and leaves its progress in them when it ends in any way.
//   - Honesty. A hacking task whose type is not its target's true phase
//     (workload.HackingPhase of the true metrics) exits when its helpers
//     would start: a failed event with reason exited, counted as a failed
//     launch with cause wrong_phase (CauseWrongPhase). Harvest income is the
//     run's planned income times HarvestScale of the target's true metrics
//     (money share times the security factor, squared). A duplicate (a task
//     started while another live task of its target exists) earns nothing,
//     completes nothing (its done event is not a completed phase and does
//     not advance a declared target) and leaves no progress in a hacking
//     target; its done event carries the target's true metrics. A wrapper
//     holds its true size (the estimate's) even when the launch asks for
//     less. The declared profile has no target state a task could check,
//     so its phase is not checked at launch.
//   - Crashes: every running task dies after an exponentially distributed
//     time with rate Config.CrashRate per task-hour. A crashed task vanishes
//     like a killed process: no event (unless Config.CrashEventProb), no
//     more heartbeats, its RAM freed, gone from ps.
//
// # Measures
//
// See Result. Useful RAM is the helper RAM of tasks whose work counts (for
// the declared profile only tasks that reported done, since a crashed or
// killed declared task loses its work; for hacking every task, since its
// progress stays in the target), over the RAM the hosts offer to tasks
// (capacity minus foreign use) for the whole run. A stranded target is one
// with no live task while some host would admit its current phase's smallest
// task (wrapper + minimum helpers; room as the worker counts it: capacity
// minus foreign use minus every task at the larger of its budget and use)
// for more than Config.StrandedAfter (one minute) at a stretch. A duplicate
// is a task that starts while another live task of its target exists.
// Failed launches are counted where they happen: refusals by the worker
// (insufficient_ram, invalid, unknown_type), helpers_unavailable after the
// start, and "unanswered" when the edge times a launch out.
//
// # Bounds
//
// Bound computes, offline, a figure no policy can beat on a world over a
// run of length H (BoundResult.Duration).
//
// hacking, the fleet-wide prep-aware bound (BoundResult.IncomePerSecond,
// PrepAwareBound). Let R be the RAM the hosts offer (capacity minus foreign
// use), w the hacking wrapper (Params.WrapperMiB), r_j target j's best
// income per helper MiB-second (workload.Params.IncomePerMiBSecond, at max
// money and minimum security) and P_j = PrepMiBSeconds of its starting
// metrics. Claim: income ≤ max_j r_j · ((R - w)·H - P_j)⁺ / H.
//
// Proof. (1) Only harvest tasks earn, and a harvest runs only while its
// target's true phase is harvest (a wrong-phase task exits), so a target j
// earns only after its security has come down to min + 1 and its money up to
// 0.99 max. (2) Security above min + 1 falls only by till's weaken threads,
// 0.05 per thread and round (sow runs only at or below min + 1, harvest
// leaves metrics alone, duplicates change nothing): that is at least
// ceil((sec - min - 1)/0.05) weaken thread-rounds. (3) Money rises only by
// sow rounds: a round of g grow threads turns m into (m + g)·e^(k g), a log
// gain of ln(1 + g/m) + k g ≤ g (k + 1/m_0), since money never falls before
// harvest (m ≥ m_0, the starting money). So sow needs at least
// ln(0.99 max/m_0)/(k + 1/m_0) grow thread-rounds, and each grow thread comes
// with at least 0.004/0.05 of a weaken thread (the run's 12:1 step, rounded
// up). (4) Each thread-round holds its thread's RAM for a whole round,
// max(4T, spacing) ≥ 4T, T fixed by the metrics. Hence target j's prep
// holds at least P_j helper MiB-seconds. (5) Whenever helpers run, some
// wrapper runs and holds at least w (a wrapper holds its true size), so
// helper RAM is at most R - w at every instant and at most (R - w)·H over
// the run. (6) A harvest with helper RAM h earns at most r_j·h per second:
// r_j maximises batch income per batch MiB over batch sizes at one batch
// per cycle, and HarvestScale ≤ 1. Let S be the targets that earn, j* the
// one with the largest rate in S. Then income·H ≤ Σ_S r_j h_j ≤ r_j* Σ_S h_j
// ≤ r_j* ((R - w)·H - Σ_S P_j) ≤ r_j* ((R - w)·H - P_j*), which is at most
// the claim. ∎ The bound holds whether or not a task's helpers may sit on
// other hosts than its wrapper (it uses no host boundary), so it stays
// valid once helpers may run anywhere. It does not cap a target at its
// full-harvest income, so at large R and long H it can exceed the old bound
// below; both are valid under today's rule (helpers on the wrapper's host),
// and the reports print both.
//
// hacking, the old bound (BoundResult.IncomeOld): a target's income comes only from harvest batches. One batch slot
// completes at most one batch per cycle (4T + 2 spacing) and no target
// completes more than one batch per 4 spacing, so per MiB-second of helper
// RAM a target earns at most r_i = workload.Params.IncomePerMiBSecond, and in
// all at most c_i, its full-harvest income (PlanHarvest.IncomePerSecond; the
// batch never steals more than the plan's). The brief's bound is total RAM
// times max_i r_i. We tighten it without losing validity: only targets whose
// smallest harvest (wrapper + one-hack-thread batch) fits on some host can
// earn; only hosts that can hold some target's smallest harvest can hold
// earning helpers, and each of them at most its RAM minus one wrapper. With
// R that usable helper RAM, the bound is the fractional knapsack
// max Σ x_i r_i subject to Σ x_i <= R and x_i r_i <= c_i, which greedy filling
// in order of r_i solves exactly. It ignores till and sow (they earn nothing
// and only delay income), host fragmentation beyond one wrapper per host, and
// launch latency; each only lowers what a policy can reach. IncomeLoose is
// the brief's R_total × max_i r_i, which is larger still. Its host filter
// assumes a task's helpers share its wrapper's host.
//
// declared: a task of phase j with h MiB of helpers (min <= h <= full) runs
// work_s × full / h seconds (workload.Run), so it holds
// (wrapper + h) × work_s × full / h MiB-seconds, which is smallest at h =
// full: c_j = (wrapper + full) × work_s. Over a run of length H on R MiB,
// completions are bounded by the fractional knapsack over per-target items —
// each non-repeat phase at most once, the repeating last phase at most
// floor((H - Σ earlier work_s) / work_s) times (one task per target at a
// time, each at least work_s long) — filled cheapest first within R × H
// MiB-seconds. Dropping the order between a target's phases only enlarges the
// feasible set, so this is an upper bound on phases completed; divided by H
// it is the phases per hour bound ("total RAM-seconds over the RAM-seconds
// the work needs", with the per-target time limits).
package sim
