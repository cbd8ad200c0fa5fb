package main

import (
	"context"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/worker"
)

func setEnv(t *testing.T, kv map[string]string) {
	t.Helper()
	for _, k := range []string{"WORKER_HOST", "WORKER_RAM_MIB", "NATS_URL", "WORKER_HEARTBEAT_INTERVAL", "WORKER_EXECUTOR",
		"WORKER_SUBJECT_PREFIX", "WORKER_KILL_ON_SHUTDOWN", "WORKER_FLUSH_TIMEOUT", "WORKER_FENCE_AFTER", "WORKER_LOG_LEVEL", "SIM_SPEED",
		"WORKER_FLEET_HELPERS", "WORKER_ALLOC_RETRY"} {
		t.Setenv(k, "") // restored after the test
		os.Unsetenv(k)
	}
	for k, v := range kv {
		t.Setenv(k, v)
	}
}

func TestConfigErrorsNameTheVariable(t *testing.T) {
	base := map[string]string{"WORKER_HOST": "h1", "WORKER_RAM_MIB": "8192"}
	cases := []struct {
		key, value, want string
	}{
		{"WORKER_HOST", "", "WORKER_HOST: required, want a host name"},
		{"WORKER_RAM_MIB", "", "WORKER_RAM_MIB: required, want a positive integer number of MiB"},
		{"WORKER_RAM_MIB", "abc", `WORKER_RAM_MIB: want a positive integer number of MiB, at most 1099511627776, got "abc"`},
		{"WORKER_RAM_MIB", "-5", `WORKER_RAM_MIB: want a positive integer number of MiB, at most 1099511627776, got "-5"`},
		{"WORKER_RAM_MIB", "1099511627777", `WORKER_RAM_MIB: want a positive integer number of MiB, at most 1099511627776, got "1099511627777"`},
		{"WORKER_HEARTBEAT_INTERVAL", "often", `WORKER_HEARTBEAT_INTERVAL: want a positive Go duration such as 1s or 500ms, got "often"`},
		{"WORKER_HEARTBEAT_INTERVAL", "0s", `WORKER_HEARTBEAT_INTERVAL: want a positive Go duration`},
		{"WORKER_FLUSH_TIMEOUT", "-1s", `WORKER_FLUSH_TIMEOUT: want a positive Go duration such as 5s, got "-1s"`},
		{"WORKER_EXECUTOR", "docker", `WORKER_EXECUTOR: want an executor name (exec, sim), got "docker"`},
		{"WORKER_SUBJECT_PREFIX", "a..b", `WORKER_SUBJECT_PREFIX: want a NATS subject prefix`},
		{"WORKER_SUBJECT_PREFIX", "t>", `WORKER_SUBJECT_PREFIX: want a NATS subject prefix`},
		{"WORKER_KILL_ON_SHUTDOWN", "maybe", `WORKER_KILL_ON_SHUTDOWN: want a boolean (true or false), got "maybe"`},
		{"WORKER_LOG_LEVEL", "loud", `WORKER_LOG_LEVEL: want one of debug, info, warn, error, got "loud"`},
		{"WORKER_FENCE_AFTER", "-1s", `WORKER_FENCE_AFTER: want a Go duration such as 8s, or 0 to turn self-fencing off, got "-1s"`},
		{"WORKER_FENCE_AFTER", "soon", `WORKER_FENCE_AFTER: want a Go duration such as 8s, or 0 to turn self-fencing off, got "soon"`},
		{"WORKER_FLEET_HELPERS", "sometimes", `WORKER_FLEET_HELPERS: want a boolean (true or false): serve fleet helpers`},
		{"WORKER_ALLOC_RETRY", "0s", `WORKER_ALLOC_RETRY: want a positive Go duration such as 2s, got "0s"`},
		{"WORKER_ALLOC_RETRY", "later", `WORKER_ALLOC_RETRY: want a positive Go duration such as 2s, got "later"`},
	}
	for _, c := range cases {
		env := map[string]string{}
		for k, v := range base {
			env[k] = v
		}
		delete(env, c.key)
		if c.value != "" {
			env[c.key] = c.value
		}
		setEnv(t, env)
		_, err := loadConfig()
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%s=%q: error %v, want prefix %q", c.key, c.value, err, c.want)
		}
	}
	setEnv(t, base)
	cfg, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NATSURL != "nats://127.0.0.1:4222" || cfg.HeartbeatInterval != time.Second || cfg.Executor != "sim" ||
		cfg.Prefix != "tasks" || cfg.KillOnShutdown || cfg.RAMMiB != 8192 || cfg.FenceAfter != worker.DefaultFenceAfter {
		t.Fatalf("defaults %+v", cfg)
	}
	// 0 turns fencing off.
	setEnv(t, map[string]string{"WORKER_HOST": "h1", "WORKER_RAM_MIB": "8192", "WORKER_FENCE_AFTER": "0"})
	if cfg, err := loadConfig(); err != nil || cfg.FenceAfter != 0 {
		t.Fatalf("WORKER_FENCE_AFTER=0: %+v, %v", cfg, err)
	}
	// A bad SIM_* variable stops startup too, before connecting.
	setEnv(t, map[string]string{"WORKER_HOST": "h1", "WORKER_RAM_MIB": "8192", "SIM_SPEED": "warp"})
	if err := run(context.Background(), io.Discard); err == nil || !strings.Contains(err.Error(), `SIM_SPEED: want a positive number`) {
		t.Fatalf("bad SIM_SPEED: %v", err)
	}
}

func TestRunServesAndStopsOnCancel(t *testing.T) {
	s := natstest.Server(t)
	nc := natstest.Conn(t, s.ClientURL())
	subj := protocol.NewSubjects("demo")
	hosts, err := nc.SubscribeSync(subj.Host("I.I.I.I"))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	setEnv(t, map[string]string{"WORKER_HOST": "I.I.I.I", "WORKER_RAM_MIB": "4096", "NATS_URL": s.ClientURL(),
		"WORKER_SUBJECT_PREFIX": "demo", "WORKER_HEARTBEAT_INTERVAL": "20ms", "WORKER_LOG_LEVEL": "error"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, io.Discard) }()

	m, err := hosts.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no host status: %v", err)
	}
	st, err := schemas.DecodeHostStatus(m.Data)
	if err != nil || st.Host != "I.I.I.I" || st.RAM.TotalMiB != 4096 {
		t.Fatalf("host status %+v, %v", st, err)
	}
	req, _ := schemas.Marshal(&schemas.LaunchRequest{TaskID: "t1", Epoch: 1, Target: "n00dles", Type: "work",
		RAM: schemas.TaskRAM{WrapperMiB: 10, HelpersMiB: 100}, Args: map[string]any{"work_s": 100}})
	rep, err := nc.Request(subj.Launch("I.I.I.I"), req, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	lr, err := schemas.DecodeLaunchReply(rep.Data)
	if err != nil || lr.PID <= 0 {
		t.Fatalf("launch reply %s: %v", rep.Data, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not stop")
	}
}
