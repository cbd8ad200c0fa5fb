// Package bus wires taskselector to NATS and JetStream: the KV buckets and
// the event stream, and the selector service that drives the pure decision
// core over them. Subjects and name encoding are in package protocol; the
// connections it runs on are made by internal/natsconn, and the embedded
// server is in internal/natsembed.
package bus
