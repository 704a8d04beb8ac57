package dataset

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

const (
	shardMagic   = "GANTRYDS"
	shardVersion = 1
	shardHeader  = 36
	maxShardN    = 1 << 24
	flagLabels   = 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt is returned (wrapped) when shard bytes fail validation.
var ErrCorrupt = errors.New("dataset: corrupt shard")

// Shard is one decoded shard: Count images of Channels x Resolution x Resolution at every
// level of detail.
type Shard struct {
	Resolution int
	Channels   int
	First      int64   // dataset index of the first image
	Labels     []int32 // one per image, or nil
	// Levels[l] holds all images at resolution Resolution>>l, image after image, each
	// channel-planar.
	Levels [][]byte
	count  int
}

// Count returns the number of images in the shard.
func (s *Shard) Count() int { return s.count }

// Image returns image i at level l (Channels x (R>>l) x (R>>l) bytes, planar).
func (s *Shard) Image(l, i int) []byte {
	n := s.Channels * (s.Resolution >> l) * (s.Resolution >> l)
	return s.Levels[l][i*n : (i+1)*n]
}

// shardSize returns the encoded size for the given shape.
func shardSize(count, r, c int, labels bool) int64 {
	size := int64(shardHeader) + 4
	if labels {
		size += 4 * int64(count)
	}
	for l := range NumLevels(r) {
		side := int64(r >> l)
		size += int64(count) * int64(c) * side * side
	}
	return size
}

// EncodeShard serialises images: levels[i] holds image i's levels as Pyramid returns them.
// labels is nil or has one entry per image.
func EncodeShard(first int64, r, c int, labels []int32, levels [][][]byte) []byte {
	count := len(levels)
	out := make([]byte, 0, shardSize(count, r, c, labels != nil))
	out = append(out, shardMagic...)
	flags := uint32(0)
	if labels != nil {
		flags |= flagLabels
	}
	out = binary.LittleEndian.AppendUint32(out, shardVersion)
	out = binary.LittleEndian.AppendUint32(out, uint32(count))
	out = binary.LittleEndian.AppendUint32(out, uint32(r))
	out = binary.LittleEndian.AppendUint32(out, uint32(c))
	out = binary.LittleEndian.AppendUint32(out, flags)
	out = binary.LittleEndian.AppendUint64(out, uint64(first))
	for _, lb := range labels {
		out = binary.LittleEndian.AppendUint32(out, uint32(lb))
	}
	for l := range NumLevels(r) {
		for i := range count {
			out = append(out, levels[i][l]...)
		}
	}
	return binary.LittleEndian.AppendUint32(out, crc32.Checksum(out, castagnoli))
}

// DecodeShard parses and verifies a shard. The returned levels alias b.
func DecodeShard(b []byte) (*Shard, error) {
	if len(b) < shardHeader+4 {
		return nil, fmt.Errorf("%w: %d bytes is shorter than the header", ErrCorrupt, len(b))
	}
	if string(b[:8]) != shardMagic {
		return nil, fmt.Errorf("%w: bad magic %q", ErrCorrupt, b[:8])
	}
	le := binary.LittleEndian
	if v := le.Uint32(b[8:]); v != shardVersion {
		return nil, fmt.Errorf("%w: version %d, this build reads %d", ErrCorrupt, v, shardVersion)
	}
	count, r, c, flags := le.Uint32(b[12:]), le.Uint32(b[16:]), le.Uint32(b[20:]), le.Uint32(b[24:])
	first := int64(le.Uint64(b[28:]))
	switch {
	case count == 0 || count > maxShardN:
		return nil, fmt.Errorf("%w: image count %d", ErrCorrupt, count)
	case checkResolution(int(r)) != nil:
		return nil, fmt.Errorf("%w: resolution %d", ErrCorrupt, r)
	case c != 1 && c != 3 && c != 4:
		return nil, fmt.Errorf("%w: %d channels", ErrCorrupt, c)
	case flags&^flagLabels != 0:
		return nil, fmt.Errorf("%w: unknown flags %#x", ErrCorrupt, flags)
	case first < 0:
		return nil, fmt.Errorf("%w: first index %d", ErrCorrupt, first)
	}
	hasLabels := flags&flagLabels != 0
	if want := shardSize(int(count), int(r), int(c), hasLabels); int64(len(b)) != want {
		return nil, fmt.Errorf("%w: %d bytes, header implies %d", ErrCorrupt, len(b), want)
	}
	body := b[:len(b)-4]
	if got, want := crc32.Checksum(body, castagnoli), le.Uint32(b[len(b)-4:]); got != want {
		return nil, fmt.Errorf("%w: checksum %08x, stored %08x", ErrCorrupt, got, want)
	}
	s := &Shard{Resolution: int(r), Channels: int(c), First: first, count: int(count)}
	off := shardHeader
	if hasLabels {
		s.Labels = make([]int32, count)
		for i := range s.Labels {
			s.Labels[i] = int32(le.Uint32(b[off:]))
			if s.Labels[i] < 0 {
				return nil, fmt.Errorf("%w: image %d has label %d", ErrCorrupt, i, s.Labels[i])
			}
			off += 4
		}
	}
	for l := range NumLevels(int(r)) {
		side := int(r) >> l
		n := int(count) * int(c) * side * side
		s.Levels = append(s.Levels, body[off:off+n:off+n])
		off += n
	}
	return s, nil
}
