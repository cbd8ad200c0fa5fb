package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/taskselector/taskselector/sim"
)

// scaleRecord is one scale run as --json prints it.
type scaleRecord struct {
	Targets            int     `json:"targets"`
	Hosts              int     `json:"hosts"`
	LaunchDecisionNs   float64 `json:"launch_decision_ns"`
	DecisionsPerSecond float64 `json:"decisions_per_s"`
	HeartbeatNs        float64 `json:"heartbeat_ns"`
	TickNs             float64 `json:"tick_ns"`
	RebuildMs          float64 `json:"rebuild_ms"`
	Records            int     `json:"records"`
	BytesPerTarget     float64 `json:"bytes_per_target"`
	Launches           uint64  `json:"launches"`
	Heartbeats         uint64  `json:"heartbeats"`
	Ticks              uint64  `json:"ticks"`
	WallS              float64 `json:"wall_s"`
}

func writeScaleJSON(rs []sim.ScaleResult) error {
	out := struct {
		Scale []scaleRecord `json:"scale"`
	}{}
	for _, r := range rs {
		out.Scale = append(out.Scale, scaleRecord{
			Targets: r.Targets, Hosts: r.Hosts, LaunchDecisionNs: r.LaunchNs, DecisionsPerSecond: r.DecisionsPerSecond(),
			HeartbeatNs: r.HeartbeatNs, TickNs: r.TickNs, RebuildMs: r.RebuildMs, Records: r.Records,
			BytesPerTarget: r.BytesPerTarget, Launches: r.Launches, Heartbeats: r.Heartbeats, Ticks: r.Ticks,
			WallS: r.Wall.Seconds(),
		})
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return fmt.Errorf("bench: json: %w", err)
	}
	return nil
}
