package schemas

import (
	"errors"
	"strings"
	"testing"

	"github.com/taskselector/taskselector/internal/strictjson"
)

// TestEveryMessageDecodable builds the decoding plan of every message type,
// so that a field type strictjson does not support fails this test rather
// than the first message received. (TestSchemaFilesCoverEveryMessage checks
// that allMessages lists every message.)
func TestEveryMessageDecodable(t *testing.T) {
	for _, m := range allMessages {
		if err := strictjson.Check(m.typ); err != nil {
			t.Errorf("%s: %v", m.name, err)
		}
	}
}

// unsupportedMessage is a message with a field type strictjson rejects.
type unsupportedMessage struct {
	V int       `json:"v"`
	C complex64 `json:"c"`
}

func (unsupportedMessage) MessageName() string { return "unsupported" }
func (unsupportedMessage) Validate() error     { return nil }

// TestUnsupportedMessageIsAnError checks that a message type the decoder
// cannot handle makes decoding fail with an error, not a panic.
func TestUnsupportedMessageIsAnError(t *testing.T) {
	_, err := decodeMessage[unsupportedMessage]([]byte(`{"v":1,"c":1}`))
	var fe *FieldError
	if err == nil || errors.As(err, &fe) ||
		!strings.HasPrefix(err.Error(), "schemas: decode unsupported: strictjson: cannot decode into") ||
		!strings.Contains(err.Error(), "unsupported type complex64") {
		t.Fatalf("got %v", err)
	}
}
