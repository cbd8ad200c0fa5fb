package main

import (
	"strings"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	c, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	e := c.engine()
	if e.LaunchTimeout != 3*time.Second || e.HeartbeatStale != 5*time.Second || e.BackoffMax != 10*time.Second ||
		e.MaxPendingLaunches != 1 || e.RecoveryGrace != e.HeartbeatStale || c.SubjectPrefix != "tasks" || c.DataDir != "./data" {
		t.Fatalf("unexpected defaults: %+v / %+v", c, e)
	}
	if err := e.Validate(); err != nil {
		t.Fatalf("default engine config invalid: %v", err)
	}
}

func TestConfigBadValuesNameTheVariable(t *testing.T) {
	for _, tc := range []struct {
		key, val, want string
	}{
		{"SELECTOR_LAUNCH_TIMEOUT", "soon", "SELECTOR_LAUNCH_TIMEOUT: want a positive duration"},
		{"SELECTOR_LAUNCH_TIMEOUT", "-1s", "SELECTOR_LAUNCH_TIMEOUT: want a positive duration"},
		{"SELECTOR_MAX_PENDING_LAUNCHES", "0", "SELECTOR_MAX_PENDING_LAUNCHES: want a whole number of at least 1"},
		{"SELECTOR_MAX_PENDING_LAUNCHES", "two", "SELECTOR_MAX_PENDING_LAUNCHES: want a whole number of at least 1"},
		{"SELECTOR_HOST_HEADROOM_MIB", "-5", "SELECTOR_HOST_HEADROOM_MIB: want a whole number of MiB, 0 or more"},
		{"SELECTOR_BACKOFF_MAX", "100ms", "SELECTOR_BACKOFF_MAX: want a positive duration no smaller than SELECTOR_BACKOFF_BASE"},
		{"SELECTOR_SUBJECT_PREFIX", "tasks.>", "SELECTOR_SUBJECT_PREFIX: want a NATS subject token"},
		{"SELECTOR_LOG_LEVEL", "loud", "SELECTOR_LOG_LEVEL: want one of debug, info, warn, error"},
		{"SIM_SPEED", "fast", "SIM_SPEED: want a number of game seconds per real second"},
		{"SELECTOR_HTTP_LISTEN", "9464", "SELECTOR_HTTP_LISTEN: want host:port such as 127.0.0.1:9464, or empty to turn it off"},
		{"SELECTOR_HTTP_LISTEN", "127.0.0.1:http", "SELECTOR_HTTP_LISTEN: want host:port"},
		{"SELECTOR_HTTP_LISTEN", "127.0.0.1:70000", "SELECTOR_HTTP_LISTEN: want host:port"},
		{"SELECTOR_UNHEALTHY_HOST_FRACTION", "1", "SELECTOR_UNHEALTHY_HOST_FRACTION: want a fraction above 0 and below 1"},
		{"SELECTOR_LEASE_TTL", "500ms", "SELECTOR_LEASE_TTL: want a duration of at least 1s, above SELECTOR_LEASE_RENEW"},
		{"SELECTOR_LEASE_TTL", "1s", "SELECTOR_LEASE_TTL: want a duration of at least 1s, above SELECTOR_LEASE_RENEW"},
		{"SELECTOR_LEASE_RENEW", "5s", "SELECTOR_LEASE_RENEW: want a positive duration below SELECTOR_LEASE_TTL"},
		{"SELECTOR_LEASE_RENEW", "0s", "SELECTOR_LEASE_RENEW: want a positive duration below SELECTOR_LEASE_TTL"},
		{"SELECTOR_REPLICAS", "0", "SELECTOR_REPLICAS: want a whole number from 1 to 5"},
		{"SELECTOR_REPLICAS", "three", "SELECTOR_REPLICAS: want a whole number from 1 to 5"},
		{"SELECTOR_ID", "a\tb", "SELECTOR_ID: want 1 to 128 printable characters"},
		{"SELECTOR_UNHEALTHY_HOST_FRACTION", "most", "SELECTOR_UNHEALTHY_HOST_FRACTION: want a fraction"},
		{"SELECTOR_HEARTBEAT_PENDING_MSGS", "-1", "SELECTOR_HEARTBEAT_PENDING_MSGS: want a whole number of messages, 0 or more"},
		{"SELECTOR_HOST_STATUS_PENDING_MSGS", "many", "SELECTOR_HOST_STATUS_PENDING_MSGS: want a whole number of messages"},
		{"SELECTOR_LOST_HOSTS_PER_MIN", "0", "SELECTOR_LOST_HOSTS_PER_MIN: want a number of hosts per minute above 0"},
		{"SELECTOR_WORKER_FENCE_AFTER", "9s", "SELECTOR_WORKER_FENCE_AFTER: want a duration of 0 or more"},
		{"SELECTOR_WORKER_FENCE_AFTER", "-1s", "SELECTOR_WORKER_FENCE_AFTER: want a duration of 0 or more"},
	} {
		t.Run(tc.key+"="+tc.val, func(t *testing.T) {
			t.Setenv(tc.key, tc.val)
			_, err := loadConfig()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("loadConfig() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestConfigHTTPListen(t *testing.T) {
	c, err := loadConfig()
	if err != nil || c.HTTPListen != "" {
		t.Fatalf("default SELECTOR_HTTP_LISTEN = %q, %v; want off", c.HTTPListen, err)
	}
	for _, v := range []string{"127.0.0.1:9464", ":9464", "[::1]:0"} {
		t.Setenv("SELECTOR_HTTP_LISTEN", v)
		if c, err := loadConfig(); err != nil || c.HTTPListen != v {
			t.Errorf("SELECTOR_HTTP_LISTEN=%s: %q, %v", v, c.HTTPListen, err)
		}
	}
}

func TestSplitListen(t *testing.T) {
	if h, p, err := splitListen("127.0.0.1:0"); err != nil || h != "127.0.0.1" || p != -1 {
		t.Fatalf("splitListen(:0) = %q %d %v", h, p, err)
	}
	if _, _, err := splitListen("nohostport"); err == nil || !strings.Contains(err.Error(), "SELECTOR_LISTEN") {
		t.Fatalf("splitListen(bad) = %v", err)
	}
}

func TestSelectorIDDefault(t *testing.T) {
	c, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	a, b := c.selectorID(), c.selectorID()
	if a == b || !strings.Contains(a, "-") || !validID(a) {
		t.Fatalf("generated ids %q and %q: want distinct, valid, host-suffix", a, b)
	}
	t.Setenv("SELECTOR_ID", "sel-1")
	if c, err = loadConfig(); err != nil || c.selectorID() != "sel-1" {
		t.Fatalf("SELECTOR_ID not used: %v %q", err, c.selectorID())
	}
	if c.LeaseTTL != 5*time.Second || c.LeaseRenew != time.Second || c.Replicas != 1 {
		t.Fatalf("lease defaults: %+v", c)
	}
}
