// Package bus wires taskselector to NATS and JetStream: the KV buckets and
// the event stream, and the selector service that drives the pure decision
// core over them. Subjects and name encoding are in package protocol; the
// connections it runs on are made by internal/natsconn, and the embedded
// server is in internal/natsembed.
//
// # Leadership
//
// Any number of selectors may run on one NATS system (ServiceConfig.Lease).
// One leads; the others stand by. Leadership is the key "leader" of the KV
// bucket LeaseBucket (per-key TTLs, with markers when a key expires):
//
//   - A standby tries to take it with Create and a TTL every renewal period,
//     and at once when its watch of the key shows it deleted or expired. The
//     TTL is not trusted alone: a key whose revision has not changed for
//     TTL + renewal period on the standby's clock is deleted at that
//     revision (a revision-checked delete cannot remove a renewed lease).
//   - The leader renews it every renewal period with a publish that expects
//     the key's last revision and carries a fresh TTL (a KV Update would
//     drop the TTL). A renewal rejected for its revision deposes it at once.
//   - The term of a tenure is the key's revision when it was taken. Stream
//     sequences only grow, so every later leader has a larger term.
//   - A leader that stops gracefully flushes its writes, then deletes the
//     key at its revision, so that a standby takes over at once.
//
// # Fencing
//
// The lease is valid until TTL after the send time of the last renewal that
// succeeded, on the leader's own monotonic clock. The server expires the key
// TTL after it stored that renewal, which is later, so a leader stops acting
// before any standby can take over. Past that time (or once a renewal is
// rejected) the service sends no launch, no kill and no write: each is
// checked just before it leaves (mayAct); the engine is told to stop
// launching; and Run returns ErrDeposed. cmd/selector then starts a new
// service on the same connection, which stands by again.
//
// A check on the leader's side cannot stop a write already on its way (a
// publish buffered while reconnecting, a paused process). The tasks bucket
// is therefore fenced on the server's side, by the whole bucket's sequence:
//
//   - On taking over, the new leader writes its term marker (the key
//     TermMarkerKey, which no target name can have) with no condition. Its
//     revision M is above every write that landed before it.
//   - Every later write of the leader carries Nats-Expected-Last-Sequence:
//     the bucket's last sequence must be the one of the leader's previous
//     write (M for the first). One writer per term, one write at a time, so
//     the condition holds for the leader's own writes, and for nobody
//     else's.
//   - A deposed leader's write expects a sequence below M: it fails with
//     "wrong last sequence", whenever it reaches the server, whatever key it
//     writes, and lands nothing. TaskStore reports it as ErrConflict.
//   - A write whose outcome was unknown (a timeout) is retried with the
//     same message id (term, expected sequence, key). The cluster answers a
//     landed one as a duplicate; a single server checks the sequence first,
//     so a retry that fails reads the key's last message from the stream's
//     leader, and adopts it if it carries that message id.
//   - Every write carries the term and the leader's id in headers
//     (HeaderTerm, HeaderLeader), for operators.
//
// This costs one write at takeover, whatever the number of tasks: no key is
// rewritten. TestFencedWrites shows a deposed leader's late put, create and
// delete failing after a new leader's marker.
//
// # Warm standbys
//
// A standby watches both buckets from its start: the targets (as a leader
// does) and the tasks, decoded as they change (warmTasks). On taking over it
// writes its marker and waits for its tasks watch to deliver it: a watch
// delivers in stream order, so everything before the marker is then
// applied, and the engine is built from the standby's copy with no replay.
// If the watch lags (its server went away), the takeover replays the bucket
// as a cold start would. The new leader then starts as a restarted selector
// does: the event backlog, the subscriptions, the durable event consumer
// (used by the leader only), and the engine's recovery grace before any
// launch.
//
// Every selector answers status requests (the endpoint has no queue
// group), with its role, the term and the leader's id.
package bus
