package protocol

// The request subjects are served as NATS micro services
// (github.com/nats-io/nats.go/micro), so that `nats micro ls`, `info` and
// `stats` list them with per-endpoint request and error counts. The
// services' names, version, endpoint names and metadata keys are part of
// what the components agree on; the subjects are the ones above.
const (
	// SelectorService is the selector's service: the endpoints status, on
	// Subjects.Status, and alloc, on Subjects.Alloc.
	SelectorService = "taskselector"
	// WorkerService is the worker agents' service, one instance per host:
	// the endpoints launch, kill, ps and helper on Subjects.Launch, Kill, Ps
	// and Helper of the instance's host, named in its metadata under
	// ServiceMetaHost.
	WorkerService = "taskselector-worker"
	// ServiceVersion is both services' version. Its major number is the
	// wire format's version (the "v" of every message).
	ServiceVersion = "1.0.0"
)

// Endpoint names of the services.
const (
	EndpointLaunch = "launch"
	EndpointKill   = "kill"
	EndpointPs     = "ps"
	EndpointStatus = "status"
	// EndpointAlloc is the selector's endpoint on Subjects.Alloc (the
	// memory-manager protocol), served in the queue group SelectorService.
	EndpointAlloc = "alloc"
	// EndpointHelper is a worker's endpoint on Subjects.Helper of its host.
	EndpointHelper = "helper"
)

// Metadata keys of the services' instances.
const (
	// ServiceMetaHost is the host a worker instance serves (its name as
	// configured, not encoded).
	ServiceMetaHost = "host"
	// ServiceMetaPrefix is the subject prefix an instance serves under.
	ServiceMetaPrefix = "prefix"
	// ServiceMetaExecutor is a worker instance's executor (sim or exec).
	ServiceMetaExecutor = "executor"
)
