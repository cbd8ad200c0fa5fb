// Package bus wires taskselector to NATS and JetStream: connections, the
// embedded server, the KV buckets and the event stream, and the selector
// service that drives the pure decision core over them. Subjects and name
// encoding are in package protocol.
package bus
