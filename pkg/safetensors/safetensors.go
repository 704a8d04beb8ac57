// Package safetensors reads and writes the safetensors tensor format, which Gantry's
// checkpoints use for parameters, optimizer state and the generator average. The format holds
// nothing executable:
//
//	8 bytes   little-endian uint64 N, the header length
//	N bytes   JSON header: {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]},
//	          ..., "__metadata__": {"key": "value"}}, padded with spaces
//	rest      the tensors' bytes, little-endian, at [b, e) relative to the end of the header
//
// Decode checks everything before it trusts it: the header length, the JSON (no duplicate
// names, no unknown keys), the dtypes, that each shape matches its byte range, and that the
// byte ranges lie inside the buffer, do not overlap and cover it with no holes. Every problem
// is a one-line error.
package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"sort"
	"strconv"
	"unicode/utf8"
)

// DType is a tensor element type as the format names it.
type DType string

// The element types of the format. Gantry writes F32; Decode accepts all of them.
const (
	BOOL    DType = "BOOL"
	U8      DType = "U8"
	I8      DType = "I8"
	F8E5M2  DType = "F8_E5M2"
	F8E4M3  DType = "F8_E4M3"
	I16     DType = "I16"
	U16     DType = "U16"
	F16     DType = "F16"
	BF16    DType = "BF16"
	I32     DType = "I32"
	U32     DType = "U32"
	F32     DType = "F32"
	F64     DType = "F64"
	I64     DType = "I64"
	U64     DType = "U64"
	maxDims       = 32
)

// MaxHeaderBytes bounds the JSON header; a larger length field means a corrupt or hostile file.
const MaxHeaderBytes = 100 << 20

// ErrFormat is wrapped by every error about malformed input.
var ErrFormat = errors.New("safetensors: malformed")

var dtypeSize = map[DType]int{
	BOOL: 1, U8: 1, I8: 1, F8E5M2: 1, F8E4M3: 1,
	I16: 2, U16: 2, F16: 2, BF16: 2,
	I32: 4, U32: 4, F32: 4,
	F64: 8, I64: 8, U64: 8,
}

// Size returns the bytes per element of d, or 0 for an unknown dtype.
func (d DType) Size() int { return dtypeSize[d] }

// Tensor is one named tensor. Data holds its elements little-endian, row-major.
type Tensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
}

// FromFloat32 returns a float32 tensor holding a copy of data.
func FromFloat32(name string, shape []int, data []float32) Tensor {
	b := make([]byte, 4*len(data))
	for i, x := range data {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return Tensor{Name: name, DType: F32, Shape: append([]int(nil), shape...), Data: b}
}

// NumElements returns the product of the shape (1 for a scalar), or -1 when a dimension is
// negative or the product overflows.
func (t Tensor) NumElements() int {
	n := uint64(1)
	for _, d := range t.Shape {
		if d < 0 {
			return -1
		}
		hi, lo := bits.Mul64(n, uint64(d))
		if hi != 0 || lo > math.MaxInt64/8 {
			return -1
		}
		n = lo
	}
	return int(n)
}

// Float32 returns the elements of an F32 tensor as a new slice.
func (t Tensor) Float32() ([]float32, error) {
	if t.DType != F32 {
		return nil, fmt.Errorf("safetensors: tensor %q is %s, not F32", t.Name, t.DType)
	}
	if len(t.Data)%4 != 0 || t.NumElements() != len(t.Data)/4 {
		return nil, fmt.Errorf("safetensors: tensor %q: %d bytes do not hold shape %v", t.Name, len(t.Data), t.Shape)
	}
	out := make([]float32, len(t.Data)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
	}
	return out, nil
}

// File is a decoded safetensors buffer.
type File struct {
	Tensors  []Tensor          // in the order of their data offsets
	Metadata map[string]string // the "__metadata__" entry (nil when absent)
}

// Tensor returns the tensor called name.
func (f *File) Tensor(name string) (Tensor, bool) {
	for _, t := range f.Tensors {
		if t.Name == name {
			return t, true
		}
	}
	return Tensor{}, false
}

// Float32 returns the F32 tensor called name, checking that its shape is shape.
func (f *File) Float32(name string, shape []int) ([]float32, error) {
	t, ok := f.Tensor(name)
	if !ok {
		return nil, fmt.Errorf("safetensors: no tensor %q", name)
	}
	if !equalInts(t.Shape, shape) {
		return nil, fmt.Errorf("safetensors: tensor %q has shape %v, want %v", name, t.Shape, shape)
	}
	return t.Float32()
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Encode serialises the tensors, in the given order, with optional metadata. Names must be
// unique and non-empty, dtypes known and each tensor's bytes must match its shape.
func Encode(tensors []Tensor, metadata map[string]string) ([]byte, error) {
	var h bytes.Buffer
	h.WriteByte('{')
	first := true
	comma := func() {
		if !first {
			h.WriteByte(',')
		}
		first = false
	}
	if len(metadata) > 0 {
		comma()
		h.WriteString(`"__metadata__":`)
		mb, err := json.Marshal(metadata)
		if err != nil {
			return nil, fmt.Errorf("safetensors: encode metadata: %w", err)
		}
		h.Write(mb)
	}
	seen := make(map[string]bool, len(tensors))
	var off uint64
	for _, t := range tensors {
		if err := checkTensor(t); err != nil {
			return nil, err
		}
		if seen[t.Name] {
			return nil, fmt.Errorf("safetensors: tensor %q given twice", t.Name)
		}
		seen[t.Name] = true
		comma()
		name, _ := json.Marshal(t.Name)
		h.Write(name)
		h.WriteString(`:{"dtype":"`)
		h.WriteString(string(t.DType))
		h.WriteString(`","shape":[`)
		for i, d := range t.Shape {
			if i > 0 {
				h.WriteByte(',')
			}
			h.WriteString(strconv.Itoa(d))
		}
		end := off + uint64(len(t.Data))
		fmt.Fprintf(&h, `],"data_offsets":[%d,%d]}`, off, end)
		off = end
	}
	h.WriteByte('}')
	for h.Len()%8 != 0 {
		h.WriteByte(' ')
	}
	out := make([]byte, 8, 8+h.Len()+int(off))
	binary.LittleEndian.PutUint64(out, uint64(h.Len()))
	out = append(out, h.Bytes()...)
	for _, t := range tensors {
		out = append(out, t.Data...)
	}
	return out, nil
}

func checkTensor(t Tensor) error {
	if t.Name == "" || t.Name == "__metadata__" || !utf8.ValidString(t.Name) {
		return fmt.Errorf("safetensors: invalid tensor name %q", t.Name)
	}
	size := t.DType.Size()
	if size == 0 {
		return fmt.Errorf("safetensors: tensor %q: unknown dtype %q", t.Name, t.DType)
	}
	if len(t.Shape) > maxDims {
		return fmt.Errorf("safetensors: tensor %q: %d dimensions, at most %d", t.Name, len(t.Shape), maxDims)
	}
	n := t.NumElements()
	if n < 0 {
		return fmt.Errorf("safetensors: tensor %q: invalid shape %v", t.Name, t.Shape)
	}
	if len(t.Data) != n*size {
		return fmt.Errorf("safetensors: tensor %q: shape %v of %s needs %d bytes, has %d", t.Name, t.Shape, t.DType, n*size, len(t.Data))
	}
	return nil
}

// headerEntry is one tensor's header record.
type headerEntry struct {
	DType       string   `json:"dtype"`
	Shape       []int64  `json:"shape"`
	DataOffsets []uint64 `json:"data_offsets"`
}

// Decode parses and validates a safetensors buffer. The tensors' Data slices alias b.
func Decode(b []byte) (*File, error) {
	if len(b) < 8 {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the 8-byte header length", ErrFormat, len(b))
	}
	n := binary.LittleEndian.Uint64(b)
	if n > MaxHeaderBytes {
		return nil, fmt.Errorf("%w: header length %d exceeds the %d-byte limit", ErrFormat, n, MaxHeaderBytes)
	}
	if n > uint64(len(b)-8) {
		return nil, fmt.Errorf("%w: header length %d runs past the end of the %d-byte buffer", ErrFormat, n, len(b))
	}
	if n < 2 {
		return nil, fmt.Errorf("%w: header length %d is too short for a JSON object", ErrFormat, n)
	}
	header := b[8 : 8+n]
	data := b[8+n:]
	if !utf8.Valid(header) {
		return nil, fmt.Errorf("%w: header is not UTF-8", ErrFormat)
	}
	f := &File{}
	dec := json.NewDecoder(bytes.NewReader(header))
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("%w: header is not a JSON object", ErrFormat)
	}
	type span struct {
		begin, end uint64
		name       string
	}
	var spans []span
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%w: header JSON: %v", ErrFormat, err)
		}
		name, _ := tok.(string)
		if seen[name] {
			return nil, fmt.Errorf("%w: header names %q twice", ErrFormat, name)
		}
		seen[name] = true
		if name == "__metadata__" {
			if err := dec.Decode(&f.Metadata); err != nil {
				return nil, fmt.Errorf("%w: __metadata__ must map strings to strings: %v", ErrFormat, err)
			}
			continue
		}
		if name == "" {
			return nil, fmt.Errorf("%w: header has a tensor with an empty name", ErrFormat)
		}
		var e headerEntry
		raw := json.RawMessage{}
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("%w: header JSON at tensor %q: %v", ErrFormat, name, err)
		}
		ed := json.NewDecoder(bytes.NewReader(raw))
		ed.DisallowUnknownFields()
		if err := ed.Decode(&e); err != nil {
			return nil, fmt.Errorf("%w: tensor %q: %v", ErrFormat, name, err)
		}
		t, sp, err := checkEntry(name, e, uint64(len(data)))
		if err != nil {
			return nil, err
		}
		t.Data = data[sp[0]:sp[1]:sp[1]]
		f.Tensors = append(f.Tensors, t)
		spans = append(spans, span{sp[0], sp[1], name})
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("%w: header JSON: %v", ErrFormat, err)
	}
	if rest := bytes.TrimRight(header[dec.InputOffset():], " "); len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d bytes of trailing garbage after the header JSON", ErrFormat, len(rest))
	}
	// Ranges must tile the data exactly: sorted by start, each begins where the last ended.
	sort.SliceStable(spans, func(i, j int) bool {
		if spans[i].begin != spans[j].begin {
			return spans[i].begin < spans[j].begin
		}
		return spans[i].end < spans[j].end
	})
	order := make(map[string]int, len(spans))
	var at uint64
	for i, s := range spans {
		if s.begin < at {
			return nil, fmt.Errorf("%w: tensor %q at [%d, %d) overlaps %q", ErrFormat, s.name, s.begin, s.end, spans[i-1].name)
		}
		if s.begin > at {
			return nil, fmt.Errorf("%w: %d unused bytes before tensor %q at offset %d", ErrFormat, s.begin-at, s.name, s.begin)
		}
		at = s.end
		order[s.name] = i
	}
	if at != uint64(len(data)) {
		return nil, fmt.Errorf("%w: tensors cover %d of %d data bytes", ErrFormat, at, len(data))
	}
	sort.SliceStable(f.Tensors, func(i, j int) bool { return order[f.Tensors[i].Name] < order[f.Tensors[j].Name] })
	return f, nil
}

func checkEntry(name string, e headerEntry, dataLen uint64) (Tensor, [2]uint64, error) {
	bad := func(format string, args ...any) (Tensor, [2]uint64, error) {
		return Tensor{}, [2]uint64{}, fmt.Errorf("%w: tensor %q: %s", ErrFormat, name, fmt.Sprintf(format, args...))
	}
	dt := DType(e.DType)
	size := dt.Size()
	if size == 0 {
		return bad("unknown dtype %q", e.DType)
	}
	if e.Shape == nil {
		return bad("no shape")
	}
	if len(e.Shape) > maxDims {
		return bad("%d dimensions, at most %d", len(e.Shape), maxDims)
	}
	shape := make([]int, len(e.Shape))
	elems := uint64(1)
	for i, d := range e.Shape {
		if d < 0 {
			return bad("negative dimension in shape %v", e.Shape)
		}
		hi, lo := bits.Mul64(elems, uint64(d))
		if hi != 0 || lo > dataLen {
			return bad("shape %v needs more bytes than the %d-byte buffer holds", e.Shape, dataLen)
		}
		elems = lo
		shape[i] = int(d)
	}
	if len(e.DataOffsets) != 2 {
		return bad("data_offsets must be [begin, end], got %v", e.DataOffsets)
	}
	b, en := e.DataOffsets[0], e.DataOffsets[1]
	if b > en || en > dataLen {
		return bad("data_offsets [%d, %d] outside the %d-byte data", b, en, dataLen)
	}
	if en-b != elems*uint64(size) {
		return bad("shape %v of %s needs %d bytes, data_offsets [%d, %d] hold %d", e.Shape, dt, elems*uint64(size), b, en, en-b)
	}
	return Tensor{Name: name, DType: dt, Shape: shape}, [2]uint64{b, en}, nil
}

// ReadAll reads r to the end, at most limit bytes, and decodes it.
func ReadAll(r io.Reader, limit int64) (*File, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("safetensors: read: %w", err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("safetensors: input larger than %d bytes", limit)
	}
	return Decode(b)
}
