// Package protocol names what taskselector's components agree on over NATS:
// the subjects under a prefix, the reversible encoding of host and target
// names into subject tokens and KV keys, and the names of the KV buckets and
// the event stream. The message types are in package schemas. It depends on
// the standard library alone, so that a worker or a client links neither
// the selector nor the NATS server.
package protocol
