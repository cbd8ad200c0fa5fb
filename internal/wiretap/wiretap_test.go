package wiretap_test

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/internal/wiretap"
)

func TestParserReportsEveryPublish(t *testing.T) {
	var got []string
	p := wiretap.NewParser(func(subject string, data []byte) { got = append(got, subject+"="+string(data)) })
	stream := "CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\nSUB tasks.> 1\r\nUNSUB 1\r\n" +
		"PUB tasks.launch.h1 _INBOX.a.1 5\r\nhello\r\n" +
		"HPUB tasks.kill.h2 _INBOX.a.2 12 15\r\nNATS/1.0\r\n\r\nbye\r\n" +
		"hpub tasks.ps.h3 12 12\r\nNATS/1.0\r\n\r\n\r\n" +
		"pub tasks.empty 0\r\n\r\n" +
		"PUB tasks.tricky 9\r\nPUB x 1\r\n\r\n" // a payload that reads like an operation
	want := []string{"tasks.launch.h1=hello", "tasks.kill.h2=bye", "tasks.ps.h3=", "tasks.empty=", "tasks.tricky=PUB x 1\r\n"}
	// One byte at a time: every split of the stream a TCP read could make.
	for i := range len(stream) {
		if err := p.Feed([]byte{stream[i]}); err != nil {
			t.Fatalf("byte %d: %v", i, err)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("one byte at a time: got %q, want %q", got, want)
	}
	got = nil
	p = wiretap.NewParser(func(subject string, data []byte) { got = append(got, subject+"="+string(data)) })
	if err := p.Feed([]byte(stream)); err != nil || !slices.Equal(got, want) {
		t.Errorf("in one piece: got %q (%v), want %q", got, err, want)
	}
}

func TestParserGivesUpOnGarbage(t *testing.T) {
	for name, bad := range map[string]string{
		"too many fields": "PUB a b c 1\r\nx\r\n",
		"bad size":        "PUB a -1\r\n\r\n",
		"headers > total": "HPUB a 5 3\r\nabc\r\n",
		"endless line":    string(make([]byte, wiretap.MaxControlLine+1)),
	} {
		n := 0
		p := wiretap.NewParser(func(string, []byte) { n++ })
		if err := p.Feed([]byte(bad)); !errors.Is(err, wiretap.ErrProtocol) {
			t.Errorf("%s: %v, want wiretap.ErrProtocol", name, err)
		}
		if err := p.Feed([]byte("PUB a 1\r\nx\r\n")); err != nil || n != 0 {
			t.Errorf("%s: a broken parser went on (%v, %d messages)", name, err, n)
		}
	}
}

// TestDialerTapsWithoutInterest: a client connected through the Dialer has
// its publishes and requests reported, a request nobody serves still fails
// at once with no responders, and the tap follows the client across a
// reconnection.
func TestDialerTapsWithoutInterest(t *testing.T) {
	port := natstest.FreePort(t)
	dir := t.TempDir()
	srv := natstest.Server(t, natstest.Port(port), natstest.StoreDir(dir), natstest.NoCleanup())
	defer func() { natstest.Shutdown(srv) }()
	var mu sync.Mutex
	var tapped []string
	seen := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(tapped)
	}
	d := &wiretap.Dialer{
		OnPublish: func(subject string, data []byte) {
			mu.Lock()
			defer mu.Unlock()
			tapped = append(tapped, subject+"="+string(data))
		},
		OnError: func(err error) { t.Errorf("tap: %v", err) },
	}
	nc, err := nats.Connect(srv.ClientURL(), nats.SetCustomDialer(d), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Publish("a.b", []byte("one")); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Request("nobody.serves", []byte("two"), 5*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("request to nobody through the tap: %v, want no responders", err)
	}
	if got, want := seen(), []string{"a.b=one", "nobody.serves=two"}; !slices.Equal(got, want) {
		t.Fatalf("tapped %q, want %q", got, want)
	}

	natstest.Shutdown(srv)
	srv = natstest.Server(t, natstest.Port(port), natstest.StoreDir(dir), natstest.NoCleanup())
	deadline := time.Now().Add(10 * time.Second)
	for !nc.IsConnected() {
		if time.Now().After(deadline) {
			t.Fatal("no reconnection")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := nc.Publish("a.c", []byte("three")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := seen(); len(got) != 3 || got[2] != "a.c=three" {
		t.Errorf("after the reconnection: tapped %q", got)
	}
}
