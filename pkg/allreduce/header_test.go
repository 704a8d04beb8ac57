package allreduce

import (
	"bytes"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{Kind: KindData, Coll: CollAllReduce, Sender: 5, Index: 1 << 31, Generation: 1<<63 + 7, Op: 42, Length: 1000003}
	msg := AppendHeader(nil, h)
	msg = append(msg, 1, 2, 3)
	got, payload, err := DecodeHeader(msg)
	if err != nil {
		t.Fatal(err)
	}
	if got != h || !bytes.Equal(payload, []byte{1, 2, 3}) {
		t.Fatalf("decoded %+v %v, want %+v [1 2 3]", got, payload, h)
	}
}

func TestDecodeHeaderRejects(t *testing.T) {
	good := AppendHeader(nil, Header{Kind: KindCredit, Coll: CollBroadcast})
	cases := map[string][]byte{
		"short":       good[:HeaderSize-1],
		"magic":       append([]byte{'X'}, good[1:]...),
		"version":     patch(good, 2, 9),
		"kind zero":   patch(good, 3, 0),
		"kind high":   patch(good, 3, 4),
		"collective":  patch(good, 4, 0),
		"reserved":    patch(good, 6, 1),
		"empty input": nil,
	}
	for name, msg := range cases {
		if _, _, err := DecodeHeader(msg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func patch(b []byte, i int, v byte) []byte {
	c := append([]byte(nil), b...)
	c[i] = v
	return c
}

// FuzzDecodeHeader checks that no input makes the decoder panic, and that whatever it
// accepts encodes back to the same bytes.
func FuzzDecodeHeader(f *testing.F) {
	f.Add(AppendHeader(nil, Header{Kind: KindData, Coll: CollAllReduce, Sender: 1, Index: 2, Generation: 3, Op: 4, Length: 5}))
	f.Add(append(AppendHeader(nil, Header{Kind: KindAbort, Coll: CollAllGather}), "peer gone"...))
	f.Add([]byte("GA"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, msg []byte) {
		h, payload, err := DecodeHeader(msg)
		if err != nil {
			return
		}
		again := append(AppendHeader(nil, h), payload...)
		if !bytes.Equal(again, msg) {
			t.Fatalf("re-encoding %+v gave %x, input was %x", h, again, msg)
		}
	})
}
