package bus

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
)

// SelectorConsumer is the durable name of the selector's consumer on the
// protocol.EventStream.
const SelectorConsumer = "selector"

// StoreConfig sizes the JetStream state. Zero fields take the defaults in
// brackets.
type StoreConfig struct {
	// Replicas of every bucket and of the stream [1].
	Replicas int
	// TargetsHistory is how many revisions of each target spec are kept,
	// for operators to look back [5]. The tasks bucket keeps 1: the
	// selector only ever needs the latest revision for its CAS.
	TargetsHistory uint8
	// EventMaxAge and EventMaxBytes bound the TASK_EVENTS stream [24h,
	// 256 MiB]; the oldest events are discarded first. They only matter
	// when the selector is down (or not acking) for longer than that:
	// events it has acked are no longer needed, and workers publish them
	// only when a task ends.
	EventMaxAge   time.Duration
	EventMaxBytes int64
	// AckWait is how long the server waits for the selector's ack of an
	// event before it redelivers it [30s]. Events are handled
	// idempotently, so a redelivery is harmless.
	AckWait time.Duration
	// MaxAckPending bounds the events delivered but not yet acked [1024].
	MaxAckPending int
}

func (c StoreConfig) withDefaults() StoreConfig {
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.TargetsHistory == 0 {
		c.TargetsHistory = 5
	}
	if c.EventMaxAge <= 0 {
		c.EventMaxAge = 24 * time.Hour
	}
	if c.EventMaxBytes <= 0 {
		c.EventMaxBytes = 256 << 20
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	if c.MaxAckPending <= 0 {
		c.MaxAckPending = 1024
	}
	return c
}

// Store holds the handles of the JetStream state the selector uses.
type Store struct {
	Targets  jetstream.KeyValue
	Tasks    jetstream.KeyValue
	Events   jetstream.Stream
	Consumer jetstream.Consumer
}

// EnsureStore creates, or updates to cfg, the targets and tasks buckets (file
// storage, no TTL), the TASK_EVENTS stream on subj.Events() (file storage,
// bounded by age and bytes) and the selector's durable consumer on it
// (explicit ack, unlimited redeliveries). It is idempotent.
//
// The stream's name is fixed, so one JetStream account serves one subject
// prefix.
func EnsureStore(ctx context.Context, js jetstream.JetStream, subj protocol.Subjects, cfg StoreConfig) (*Store, error) {
	cfg = cfg.withDefaults()
	targets, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:       protocol.TargetsBucket,
		Description:  "taskselector: desired targets (key = encoded target name, value = TargetSpec)",
		History:      cfg.TargetsHistory,
		MaxValueSize: schemas.MaxMessageBytes,
		Storage:      jetstream.FileStorage,
		Replicas:     cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: ensure bucket %s: %w", protocol.TargetsBucket, err)
	}
	tasks, err := js.CreateOrUpdateKeyValue(ctx, TasksBucketConfig(cfg))
	if err != nil {
		return nil, fmt.Errorf("bus: ensure bucket %s: %w", protocol.TasksBucket, err)
	}
	stream, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        protocol.EventStream,
		Description: "taskselector: task done/failed events",
		Subjects:    []string{subj.Events()},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      cfg.EventMaxAge,
		MaxBytes:    cfg.EventMaxBytes,
		MaxMsgSize:  schemas.MaxMessageBytes,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		Duplicates:  2 * time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: ensure stream %s: %w", protocol.EventStream, err)
	}
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       SelectorConsumer,
		Description:   "taskselector: the selector's event consumer",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: cfg.MaxAckPending,
		FilterSubject: subj.Events(),
	})
	if err != nil {
		return nil, fmt.Errorf("bus: ensure consumer %s on %s: %w", SelectorConsumer, protocol.EventStream, err)
	}
	return &Store{Targets: targets, Tasks: tasks, Events: stream, Consumer: cons}, nil
}

// TasksBucketConfig is the configuration of the tasks bucket under cfg (its
// zero fields taking their defaults).
func TasksBucketConfig(cfg StoreConfig) jetstream.KeyValueConfig {
	cfg = cfg.withDefaults()
	return jetstream.KeyValueConfig{
		Bucket:       protocol.TasksBucket,
		Description:  "taskselector: selector state per target (key = encoded target name, value = TaskState); written by the selector only",
		History:      1,
		MaxValueSize: schemas.MaxMessageBytes,
		Storage:      jetstream.FileStorage,
		Replicas:     cfg.Replicas,
		// No TTL, ever: expiring task state would forget live tasks.
	}
}
