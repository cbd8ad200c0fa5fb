package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TermMarkerKey is the key of the tasks bucket where a new leader records
// its term when it takes over (see TaskStore.Fence). "=." is no encoded
// name (base64 has no '.'), so no target can ever have this key.
const TermMarkerKey = "=.term"

// Headers of every fenced write to the tasks bucket.
const (
	// HeaderTerm carries the writer's term.
	HeaderTerm = "Selector-Term"
	// HeaderLeader carries the writer's selector id.
	HeaderLeader = "Selector-Id"
)

// termMarker is TermMarkerKey's value.
type termMarker struct {
	Term   uint64 `json:"term"`
	Leader string `json:"leader"`
}

// storeFence makes every write of a TaskStore conditional on the whole
// bucket: each expects the bucket's last sequence to be the one of this
// leader's previous write (or of its term marker). See TaskStore.Fence.
type storeFence struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	prefix  string // "$KV.<bucket>."
	stream  string // the bucket's stream
	term    uint64
	leader  string
	mu      sync.Mutex
	lastSeq uint64 // the bucket's last sequence, as written by us
}

// WriteTermMarker writes the term marker of a new leader (term, id) to the
// tasks bucket kv with no condition, and returns its revision: every write
// a deposed leader sends from then on expects an older last sequence, and
// fails.
func WriteTermMarker(ctx context.Context, kv jetstream.KeyValue, term uint64, id string) (uint64, error) {
	val, _ := json.Marshal(termMarker{Term: term, Leader: id})
	rev, err := kv.Put(ctx, TermMarkerKey, val)
	if err != nil {
		return 0, fmt.Errorf("bus: write the term marker: %w", err)
	}
	return rev, nil
}

// Fence makes every later write of the store conditional on the whole
// bucket, for a leader of term whose view of the bucket is complete up to
// lastSeq (its term marker, written with WriteTermMarker, and everything
// before it). Each write is published with Nats-Expected-Last-Sequence set
// to the sequence of this leader's previous write, so it lands only if
// nothing else was written to the bucket since. A deposed leader's writes
// expect a sequence older than the new leader's marker and fail (as
// ErrConflict), whenever they reach the server. Each write also carries
// the term and id in headers, and a message id unique to (term, expected
// sequence, key), by which a retry whose first attempt landed finds it.
func (s *TaskStore) Fence(nc *nats.Conn, js jetstream.JetStream, term uint64, leader string, lastSeq uint64) {
	bucket := s.kv.Bucket()
	s.fence = &storeFence{
		nc: nc, js: js, prefix: "$KV." + bucket + ".", stream: "KV_" + bucket,
		term: term, leader: leader, lastSeq: lastSeq,
	}
}

// writeFenced writes (data != nil) or deletes (data == nil) key under the
// fence. A lost condition returns an error wrapping ErrConflict, once a read
// from the stream's leader shows that the key's last message is not this
// very write (whose first attempt may have landed unseen).
func (s *TaskStore) writeFenced(ctx context.Context, key string, data []byte) error {
	f := s.fence
	f.mu.Lock()
	last := f.lastSeq
	f.mu.Unlock()
	msg := nats.NewMsg(f.prefix + key)
	msg.Data = data
	if data == nil {
		msg.Header.Set("KV-Operation", "DEL")
	}
	msg.Header.Set(HeaderTerm, strconv.FormatUint(f.term, 10))
	msg.Header.Set(HeaderLeader, f.leader)
	id := fmt.Sprintf("t%d-s%d-%s", f.term, last, key)
	ack, err := f.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequence(last), jetstream.WithMsgID(id))
	var seq uint64
	switch {
	case err == nil:
		seq = ack.Sequence
	case isWrongLastSeq(err):
		// Perhaps an earlier attempt of this write landed (a single
		// server checks the condition before the message id).
		got, rerr := f.lastOf(ctx, key)
		if rerr != nil {
			return fmt.Errorf("bus: fenced write of %q: %w (and cannot read it back: %w)", key, err, rerr)
		}
		if got.id != id {
			return fmt.Errorf("bus: fenced write of %q (term %d, after sequence %d): %w: %w", key, f.term, last, ErrConflict, err)
		}
		seq = got.seq
	default:
		return fmt.Errorf("bus: fenced write of %q: %w", key, err)
	}
	f.mu.Lock()
	f.lastSeq = max(f.lastSeq, seq)
	f.mu.Unlock()
	s.mu.Lock()
	if data == nil {
		delete(s.revs, key)
		delete(s.vals, key)
	} else {
		s.revs[key] = seq
		s.vals[key] = data
	}
	delete(s.lost, key)
	s.mu.Unlock()
	return nil
}

type lastMsg struct {
	seq uint64
	id  string
}

// lastOf reads key's last message from the stream's leader (not a direct
// get, which any replica may answer from behind).
func (f *storeFence) lastOf(ctx context.Context, key string) (lastMsg, error) {
	req, _ := json.Marshal(map[string]string{"last_by_subj": f.prefix + key})
	resp, err := f.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+f.stream, req)
	if err != nil {
		return lastMsg{}, err
	}
	return parseLastMsg(resp.Data)
}

// parseLastMsg decodes the server's answer to a stream message get: the
// message's sequence and message id, a zero lastMsg when there is none, or
// the error it carries.
func parseLastMsg(data []byte) (lastMsg, error) {
	var r struct {
		Message *struct {
			Seq  uint64 `json:"seq"`
			Hdrs []byte `json:"hdrs"`
		} `json:"message"`
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return lastMsg{}, fmt.Errorf("decode stream message: %w", err)
	}
	if r.Error != nil {
		if r.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound {
			return lastMsg{}, nil
		}
		return lastMsg{}, r.Error
	}
	if r.Message == nil {
		return lastMsg{}, errors.New("stream message: empty answer")
	}
	out := lastMsg{seq: r.Message.Seq}
	if len(r.Message.Hdrs) > 0 {
		h, err := nats.DecodeHeadersMsg(r.Message.Hdrs)
		if err != nil {
			return lastMsg{}, fmt.Errorf("decode stream message headers: %w", err)
		}
		out.id = h.Get(jetstream.MsgIDHeader)
	}
	return out, nil
}

// Term is the fence's term, 0 without a fence.
func (s *TaskStore) Term() uint64 {
	if s.fence == nil {
		return 0
	}
	return s.fence.term
}

// isTermMarker reports whether key is the term marker's.
func isTermMarker(key string) bool { return key == TermMarkerKey }
