package bus

import (
	"github.com/taskselector/taskselector/schemas"
)

// Sources of malformed messages, as counted in status.
const (
	SourceHeartbeat   = "heartbeat"
	SourceHost        = "host"
	SourceEvent       = "event"
	SourceTargets     = "targets"
	SourceTasks       = "tasks"
	SourceLaunchReply = "launch_reply"
	SourcePsReply     = "ps_reply"
	SourceKillReply   = "kill_reply"
)

// The decoders the service uses, all strict (schemas/): one place to see
// what each input goes through.

func decodeHeartbeat(data []byte, hb *schemas.Heartbeat) error {
	return schemas.DecodeHeartbeatInto(data, hb)
}

func decodeTaskEvent(data []byte) (*schemas.TaskEvent, error) {
	ev, err := schemas.DecodeTaskEvent(data)
	if err != nil {
		return nil, err
	}
	return &ev, nil
}

func decodeHostStatus(data []byte) (*schemas.HostStatus, error) {
	hs, err := schemas.DecodeHostStatus(data)
	if err != nil {
		return nil, err
	}
	return &hs, nil
}

func decodeTargetSpec(data []byte) (schemas.TargetSpec, error) { return schemas.DecodeTargetSpec(data) }
func decodeTaskState(data []byte) (schemas.TaskState, error)   { return schemas.DecodeTaskState(data) }
func decodeLaunchReply(data []byte) (schemas.LaunchReply, error) {
	return schemas.DecodeLaunchReply(data)
}
func decodePsReply(data []byte) (schemas.PsReply, error)     { return schemas.DecodePsReply(data) }
func decodeKillReply(data []byte) (schemas.KillReply, error) { return schemas.DecodeKillReply(data) }
