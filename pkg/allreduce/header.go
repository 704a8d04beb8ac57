package allreduce

import (
	"encoding/binary"
	"fmt"
)

// HeaderSize is the length in bytes of the binary header that starts every message.
const HeaderSize = 40

const (
	magic0  = 'G'
	magic1  = 'A'
	version = 1
)

// Kind says what a message carries.
type Kind uint8

// Message kinds.
const (
	// KindData carries one chunk of a collective's payload from a rank to its successor.
	KindData Kind = 1
	// KindCredit lets the predecessor send messages with an index below Header.Index.
	KindCredit Kind = 2
	// KindAbort tells every member that the sender gave up on the collective; the payload
	// is the reason as text.
	KindAbort Kind = 3
)

// Collective names the operation a message belongs to, so that ranks calling different
// collectives with the same sequence number fail instead of mixing data.
type Collective uint8

// Collectives.
const (
	CollAllReduce Collective = 1
	CollBroadcast Collective = 2
	CollAllGather Collective = 3
	CollStream    Collective = 4
)

func (c Collective) String() string {
	switch c {
	case CollAllReduce:
		return "all-reduce"
	case CollBroadcast:
		return "broadcast"
	case CollAllGather:
		return "all-gather"
	case CollStream:
		return "stream"
	}
	return fmt.Sprintf("collective(%d)", uint8(c))
}

// Header is the fixed part of every message. Layout, little-endian:
//
//	0  'G' 'A'      magic
//	2  u8           version (1)
//	3  u8           kind
//	4  u8           collective
//	5  3 bytes      zero
//	8  u32          sender rank
//	12 u32          message index in the sender's stream (credit: the grant)
//	16 u64          generation
//	24 u64          operation sequence number within the generation
//	32 u64          buffer length in elements (lets ranks detect mismatched buffers)
//	40              payload
type Header struct {
	Kind       Kind
	Coll       Collective
	Sender     uint32
	Index      uint32
	Generation uint64
	Op         uint64
	Length     uint64
}

// AppendHeader appends the encoded header to dst and returns the extended slice.
func AppendHeader(dst []byte, h Header) []byte {
	var b [HeaderSize]byte
	b[0], b[1], b[2], b[3], b[4] = magic0, magic1, version, byte(h.Kind), byte(h.Coll)
	binary.LittleEndian.PutUint32(b[8:], h.Sender)
	binary.LittleEndian.PutUint32(b[12:], h.Index)
	binary.LittleEndian.PutUint64(b[16:], h.Generation)
	binary.LittleEndian.PutUint64(b[24:], h.Op)
	binary.LittleEndian.PutUint64(b[32:], h.Length)
	return append(dst, b[:]...)
}

// DecodeHeader parses the header at the start of msg and returns it with the payload that
// follows. It rejects anything that is not a message this package wrote.
func DecodeHeader(msg []byte) (Header, []byte, error) {
	if len(msg) < HeaderSize {
		return Header{}, nil, fmt.Errorf("allreduce: message of %d bytes is shorter than the %d-byte header", len(msg), HeaderSize)
	}
	if msg[0] != magic0 || msg[1] != magic1 {
		return Header{}, nil, fmt.Errorf("allreduce: bad magic %q", msg[:2])
	}
	if msg[2] != version {
		return Header{}, nil, fmt.Errorf("allreduce: unsupported header version %d (want %d)", msg[2], version)
	}
	h := Header{
		Kind:       Kind(msg[3]),
		Coll:       Collective(msg[4]),
		Sender:     binary.LittleEndian.Uint32(msg[8:]),
		Index:      binary.LittleEndian.Uint32(msg[12:]),
		Generation: binary.LittleEndian.Uint64(msg[16:]),
		Op:         binary.LittleEndian.Uint64(msg[24:]),
		Length:     binary.LittleEndian.Uint64(msg[32:]),
	}
	if h.Kind < KindData || h.Kind > KindAbort {
		return Header{}, nil, fmt.Errorf("allreduce: unknown message kind %d", msg[3])
	}
	if h.Coll < CollAllReduce || h.Coll > CollStream {
		return Header{}, nil, fmt.Errorf("allreduce: unknown collective %d", msg[4])
	}
	if msg[5] != 0 || msg[6] != 0 || msg[7] != 0 {
		return Header{}, nil, fmt.Errorf("allreduce: reserved header bytes are not zero")
	}
	return h, msg[HeaderSize:], nil
}
