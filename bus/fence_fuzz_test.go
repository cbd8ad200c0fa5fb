package bus

import (
	"encoding/json"
	"testing"

	"github.com/nats-io/nats.go"
)

// FuzzParseLastMsg: the answer to a stream message get never panics, and a
// message's id comes from its headers.
func FuzzParseLastMsg(f *testing.F) {
	hdr := []byte("NATS/1.0\r\nNats-Msg-Id: t3-s9-x\r\n\r\n")
	ok, _ := json.Marshal(map[string]any{"message": map[string]any{"seq": 10, "hdrs": hdr}})
	f.Add(ok)
	f.Add([]byte(`{"error":{"code":404,"err_code":10037,"description":"no message found"}}`))
	f.Add([]byte(`{"error":{"code":503,"err_code":10008}}`))
	f.Add([]byte(`{"message":{"seq":1,"hdrs":"bm90IGhlYWRlcnM="}}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`nonsense`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseLastMsg(data)
		if err != nil && (m.seq != 0 || m.id != "") {
			t.Fatalf("error %v with a message %+v", err, m)
		}
		if err == nil && m.id != "" {
			var r struct {
				Message struct {
					Hdrs []byte `json:"hdrs"`
				} `json:"message"`
			}
			if json.Unmarshal(data, &r) != nil {
				t.Fatal("an id from an undecodable answer")
			}
			h, herr := nats.DecodeHeadersMsg(r.Message.Hdrs)
			if herr != nil || h.Get("Nats-Msg-Id") != m.id {
				t.Fatalf("id %q not the header's", m.id)
			}
		}
	})
}

// FuzzParseLeaseValue: any value of the lease key decodes without a panic,
// and one that is not a lease value names no holder.
func FuzzParseLeaseValue(f *testing.F) {
	f.Add([]byte(`{"id":"sel-a","term":4}`))
	f.Add([]byte(`{"id":"sel-a"}`))
	f.Add([]byte(`{"id":7}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, data []byte) {
		v := parseLeaseValue(data)
		var want leaseValue
		if json.Unmarshal(data, &want) != nil {
			if v != (leaseValue{}) {
				t.Fatalf("undecodable value gave %+v", v)
			}
			return
		}
		if v != want {
			t.Fatalf("got %+v, want %+v", v, want)
		}
	})
}

func TestParseLastMsg(t *testing.T) {
	hdr := []byte("NATS/1.0\r\nNats-Msg-Id: t3-s9-x\r\n\r\n")
	ok, _ := json.Marshal(map[string]any{"message": map[string]any{"seq": 10, "hdrs": hdr}})
	m, err := parseLastMsg(ok)
	if err != nil || m.seq != 10 || m.id != "t3-s9-x" {
		t.Fatalf("got %+v, %v", m, err)
	}
	if m, err := parseLastMsg([]byte(`{"error":{"code":404,"err_code":10037}}`)); err != nil || m != (lastMsg{}) {
		t.Fatalf("no message: got %+v, %v", m, err)
	}
	if _, err := parseLastMsg([]byte(`{"error":{"code":503,"err_code":10008,"description":"unavailable"}}`)); err == nil {
		t.Fatal("an error answer decoded")
	}
}
