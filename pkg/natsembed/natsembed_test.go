package natsembed

import (
	"testing"

	"github.com/nats-io/nats.go"
)

func TestStartPublishSubscribe(t *testing.T) {
	s, err := Start(Options{MaxPayload: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	nc, err := nats.Connect(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if got := nc.MaxPayload(); got != 4096 {
		t.Fatalf("max_payload seen by the client = %d, want 4096", got)
	}
	sub, err := nc.SubscribeSync("x")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("x", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(5e9)
	if err != nil || string(m.Data) != "hello" {
		t.Fatalf("got %v, %v; want hello", m, err)
	}
	if err := nc.Publish("x", make([]byte, 5000)); err == nil {
		t.Fatal("publishing 5000 bytes over a 4096-byte max_payload succeeded")
	}
}

func TestTwoServersGetDistinctPorts(t *testing.T) {
	a, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown()
	b, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown()
	if a.URL() == b.URL() {
		t.Fatalf("both servers at %s", a.URL())
	}
}
