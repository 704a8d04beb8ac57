package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"testing"
)

func sample() []Tensor {
	return []Tensor{
		FromFloat32("mapping.0.weight", []int{3, 2}, []float32{1, -2, 3.5, float32(math.Inf(1)), 0, -0}),
		FromFloat32("scalar", []int{}, []float32{42}),
		FromFloat32("empty", []int{0, 4}, nil),
		{Name: "bytes", DType: U8, Shape: []int{3}, Data: []byte{7, 8, 9}},
		{Name: "step", DType: I64, Shape: []int{1}, Data: []byte{1, 0, 0, 0, 0, 0, 0, 0}},
	}
}

func TestRoundTrip(t *testing.T) {
	in := sample()
	meta := map[string]string{"format": "gantry", "kimg": "12.5"}
	b, err := Encode(in, meta)
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(b)
	if (8+n)%8 != 0 || b[8] != '{' {
		t.Errorf("header length %d not aligned or not an object", n)
	}
	f, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Tensors) != len(in) || f.Metadata["kimg"] != "12.5" {
		t.Fatalf("decoded %d tensors, metadata %v", len(f.Tensors), f.Metadata)
	}
	for i, want := range in {
		got := f.Tensors[i] // data order is the encoding order
		if got.Name != want.Name || got.DType != want.DType || !equalInts(got.Shape, want.Shape) ||
			!bytes.Equal(got.Data, want.Data) {
			t.Errorf("tensor %d: got %+v, want %+v", i, got, want)
		}
	}
	w, err := f.Float32("mapping.0.weight", []int{3, 2})
	if err != nil || w[2] != 3.5 || !math.IsInf(float64(w[3]), 1) {
		t.Errorf("Float32: %v %v", w, err)
	}
	if _, err := f.Float32("mapping.0.weight", []int{6}); err == nil {
		t.Errorf("wrong shape accepted")
	}
	if _, err := f.Float32("bytes", []int{3}); err == nil {
		t.Errorf("U8 read as F32")
	}
	if _, err := f.Float32("missing", nil); err == nil {
		t.Errorf("missing tensor read")
	}
	// Encoding is deterministic.
	b2, _ := Encode(in, meta)
	if !bytes.Equal(b, b2) {
		t.Errorf("encoding is not deterministic")
	}
	// No tensors, no metadata.
	e, err := Encode(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if f, err := Decode(e); err != nil || len(f.Tensors) != 0 {
		t.Errorf("empty file: %v", err)
	}
}

func TestEncodeErrors(t *testing.T) {
	cases := []struct {
		ts   []Tensor
		want string
	}{
		{[]Tensor{FromFloat32("a", []int{2}, []float32{1})}, "needs 8 bytes, has 4"},
		{[]Tensor{{Name: "a", DType: "F17", Shape: []int{}, Data: nil}}, "unknown dtype"},
		{[]Tensor{FromFloat32("", nil, []float32{1})}, "invalid tensor name"},
		{[]Tensor{FromFloat32("a", nil, []float32{1}), FromFloat32("a", nil, []float32{1})}, "given twice"},
		{[]Tensor{FromFloat32("a", []int{-1}, nil)}, "invalid shape"},
	}
	for _, c := range cases {
		if _, err := Encode(c.ts, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("got %v, want %q", err, c.want)
		}
	}
}

// build assembles a buffer from a raw header and data.
func build(header string, data []byte) []byte {
	b := make([]byte, 8, 8+len(header)+len(data))
	binary.LittleEndian.PutUint64(b, uint64(len(header)))
	return append(append(b, header...), data...)
}

func TestDecodeErrors(t *testing.T) {
	d8 := make([]byte, 8)
	huge := make([]byte, 8)
	binary.LittleEndian.PutUint64(huge, 1<<40)
	cases := []struct {
		name string
		b    []byte
		want string
	}{
		{"short", []byte{1, 2, 3}, "shorter than the 8-byte header length"},
		{"huge header", huge, "exceeds"},
		{"header past end", build(`{}`, nil)[:9], "runs past the end"},
		{"not object", build(`[1]`, nil), "not a JSON object"},
		{"bad json", build(`{"a":`, nil), "header JSON"},
		{"unknown dtype", build(`{"a":{"dtype":"Q8","shape":[1],"data_offsets":[0,1]}}`, []byte{0}), `tensor "a": unknown dtype "Q8"`},
		{"unknown key", build(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1}}`, []byte{0}), "unknown field"},
		{"no shape", build(`{"a":{"dtype":"U8","data_offsets":[0,1]}}`, []byte{0}), "no shape"},
		{"negative dim", build(`{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}`, []byte{0}), "negative dimension"},
		{"shape mismatch", build(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, d8), "needs 12 bytes"},
		{"shape overflow", build(`{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}`, d8), "needs more bytes"},
		{"offsets out of range", build(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[7,16]}}`, d8), "outside the 8-byte data"},
		{"shape too big", build(`{"a":{"dtype":"U8","shape":[16],"data_offsets":[0,16]}}`, d8), "needs more bytes than"},
		{"offsets reversed", build(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}`, d8), "outside"},
		{"offsets arity", build(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}}`, d8), "data_offsets must be [begin, end]"},
		{"overlap", build(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[6],"data_offsets":[2,8]}}`, d8), "overlaps"},
		{"hole", build(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}}`, d8), "unused bytes"},
		{"uncovered tail", build(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}`, d8), "cover 4 of 8"},
		{"duplicate", build(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}`, d8), `names "a" twice`},
		{"metadata type", build(`{"__metadata__":{"k":1}}`, nil), "__metadata__"},
		{"empty name", build(`{"":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}`, nil), "empty name"},
		{"trailing", build(`{} x`, nil), "after the header JSON"},
		{"not utf8", build("{\"\xff\":1}", nil), "UTF-8"},
	}
	for _, c := range cases {
		_, err := Decode(c.b)
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %q, want one line containing %q", c.name, err, c.want)
		}
	}
}

func TestReadAllLimit(t *testing.T) {
	b, _ := Encode(sample(), nil)
	if _, err := ReadAll(bytes.NewReader(b), int64(len(b))); err != nil {
		t.Errorf("ReadAll at the limit: %v", err)
	}
	if _, err := ReadAll(bytes.NewReader(b), int64(len(b)-1)); err == nil {
		t.Errorf("ReadAll over the limit accepted")
	}
}

func FuzzDecode(f *testing.F) {
	b, _ := Encode(sample(), map[string]string{"a": "b"})
	f.Add(b)
	f.Add(build(`{}`, nil))
	f.Add(build(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}`, make([]byte, 4)))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		file, err := Decode(in)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes and decodes to the same tensors.
		out, err := Encode(file.Tensors, file.Metadata)
		if err != nil {
			t.Fatalf("re-encode of a decoded file: %v", err)
		}
		again, err := Decode(out)
		if err != nil {
			t.Fatalf("decode of a re-encoded file: %v", err)
		}
		if len(again.Tensors) != len(file.Tensors) {
			t.Fatalf("tensor count changed")
		}
		for i := range file.Tensors {
			a, b := file.Tensors[i], again.Tensors[i]
			if a.Name != b.Name || a.DType != b.DType || !equalInts(a.Shape, b.Shape) || !bytes.Equal(a.Data, b.Data) {
				t.Fatalf("tensor %d changed: %+v vs %+v", i, a, b)
			}
		}
	})
}
