package dataset

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// idxBytes builds an IDX file of unsigned bytes with the given dimensions and data.
func idxBytes(dims []int, data []byte) []byte {
	b := []byte{0, 0, 0x08, byte(len(dims))}
	for _, d := range dims {
		b = binary.BigEndian.AppendUint32(b, uint32(d))
	}
	return append(b, data...)
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func TestReadIDX(t *testing.T) {
	data := make([]byte, 2*3*4)
	for i := range data {
		data[i] = byte(i)
	}
	good := idxBytes([]int{2, 3, 4}, data)
	for _, tc := range []struct {
		name string
		in   []byte
		want string // error substring, "" for success
	}{
		{"raw", good, ""},
		{"gzip", gz(good), ""},
		{"bad magic", append([]byte{1, 2, 8, 3}, good[4:]...), "bad magic"},
		{"float type", append([]byte{0, 0, 0x0d, 3}, good[4:]...), "element type 0x0d"},
		{"short data", good[:len(good)-5], "short data"},
		{"trailing data", append(append([]byte{}, good...), 9), "trailing data"},
		{"short header", good[:6], "short header"},
		{"no dims", []byte{0, 0, 8, 0}, "0 dimensions"},
		{"huge", idxBytes([]int{1 << 20, 1 << 20, 1 << 20}, nil), "more than"},
		{"gzip short data", gz(good[:len(good)-1]), "short data"},
		{"empty", nil, "short header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x, err := ReadIDX(bytes.NewReader(tc.in))
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if len(x.Dims) != 3 || x.Dims[2] != 4 || !bytes.Equal(x.Data, data) {
					t.Fatalf("got dims %v, %d bytes", x.Dims, len(x.Data))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func FuzzReadIDX(f *testing.F) {
	f.Add(idxBytes([]int{2, 2, 2}, make([]byte, 8)))
	f.Add(gz(idxBytes([]int{1, 3}, []byte{1, 2, 3})))
	f.Add([]byte{0, 0, 8, 4, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := ReadIDX(bytes.NewReader(b))
		if err != nil {
			return
		}
		n := 1
		for _, d := range x.Dims {
			n *= d
		}
		if n != len(x.Data) {
			t.Fatalf("dims %v but %d bytes", x.Dims, len(x.Data))
		}
	})
}

// refPyramid is StyleGAN's dataset tool in float32: average 2x2 blocks of the previous
// float level, quantise each level with round-half-to-even.
func refPyramid(img []byte, c, r int) [][]byte {
	cur := make([]float32, len(img))
	for i, v := range img {
		cur[i] = float32(v)
	}
	var out [][]byte
	for side := r; side >= 4; side /= 2 {
		q := make([]byte, len(cur))
		for i, v := range cur {
			q[i] = byte(math.RoundToEven(float64(v)))
		}
		out = append(out, q)
		half := side / 2
		next := make([]float32, c*half*half)
		for ch := range c {
			for y := range half {
				for x := range half {
					p := cur[ch*side*side:]
					next[ch*half*half+y*half+x] = (p[2*y*side+2*x] + p[2*y*side+2*x+1] + p[(2*y+1)*side+2*x] + p[(2*y+1)*side+2*x+1]) * 0.25
				}
			}
		}
		cur = next
	}
	return out
}

func TestPyramidMatchesStyleGAN(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct{ c, r int }{{1, 4}, {1, 32}, {3, 64}, {4, 16}, {3, 256}} {
		img := make([]byte, tc.c*tc.r*tc.r)
		for i := range img {
			img[i] = byte(rng.IntN(256))
		}
		// Also a smooth image, where ties are common.
		smooth := make([]byte, len(img))
		for i := range smooth {
			smooth[i] = byte(i % 7 * 3)
		}
		for _, in := range [][]byte{img, smooth} {
			got, want := Pyramid(in, tc.c, tc.r), refPyramid(in, tc.c, tc.r)
			if len(got) != NumLevels(tc.r) || len(got) != len(want) {
				t.Fatalf("c=%d r=%d: %d levels, want %d", tc.c, tc.r, len(got), len(want))
			}
			for l := range got {
				if !bytes.Equal(got[l], want[l]) {
					t.Fatalf("c=%d r=%d level %d differs from the float32 reference", tc.c, tc.r, l)
				}
			}
		}
	}
}

func testShard(t testing.TB, n, r, c int, labels bool) ([]byte, [][][]byte, []int32) {
	rng := rand.New(rand.NewPCG(uint64(n), uint64(r)))
	var levels [][][]byte
	var lbl []int32
	for i := range n {
		img := make([]byte, c*r*r)
		for j := range img {
			img[j] = byte(rng.IntN(256))
		}
		levels = append(levels, Pyramid(img, c, r))
		if labels {
			lbl = append(lbl, int32(i%10))
		}
	}
	return EncodeShard(100, r, c, lbl, levels), levels, lbl
}

func TestShardRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		n, r, c int
		labels  bool
	}{{1, 4, 1, false}, {5, 16, 3, true}, {3, 32, 4, true}} {
		b, levels, labels := testShard(t, tc.n, tc.r, tc.c, tc.labels)
		s, err := DecodeShard(b)
		if err != nil {
			t.Fatal(err)
		}
		if s.Count() != tc.n || s.Resolution != tc.r || s.Channels != tc.c || s.First != 100 {
			t.Fatalf("decoded header %+v", s)
		}
		for i := range tc.n {
			for l := range NumLevels(tc.r) {
				if !bytes.Equal(s.Image(l, i), levels[i][l]) {
					t.Fatalf("image %d level %d differs", i, l)
				}
			}
		}
		if tc.labels && (len(s.Labels) != tc.n || s.Labels[tc.n-1] != labels[tc.n-1]) {
			t.Fatalf("labels %v, want %v", s.Labels, labels)
		}
		if int64(len(b)) != shardSize(tc.n, tc.r, tc.c, tc.labels) {
			t.Fatalf("size %d, shardSize says %d", len(b), shardSize(tc.n, tc.r, tc.c, tc.labels))
		}
		// Any flipped byte is caught.
		for _, off := range []int{0, 13, 40, len(b) / 2, len(b) - 1} {
			bad := append([]byte(nil), b...)
			bad[off] ^= 0x20
			if _, err := DecodeShard(bad); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("flip at %d: %v, want ErrCorrupt", off, err)
			}
		}
		if _, err := DecodeShard(b[:len(b)-1]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated shard: %v, want ErrCorrupt", err)
		}
	}
}

func FuzzDecodeShard(f *testing.F) {
	b, _, _ := testShard(f, 2, 8, 3, true)
	f.Add(b)
	b, _, _ = testShard(f, 1, 4, 1, false)
	f.Add(b)
	f.Add([]byte(shardMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeShard(b)
		if err != nil {
			return
		}
		var levels [][][]byte
		for i := range s.Count() {
			var img [][]byte
			for l := range NumLevels(s.Resolution) {
				img = append(img, s.Image(l, i))
			}
			levels = append(levels, img)
		}
		if again := EncodeShard(s.First, s.Resolution, s.Channels, s.Labels, levels); !bytes.Equal(again, b) {
			t.Fatal("decoded shard does not re-encode to the same bytes")
		}
	})
}

func validManifest() []byte {
	b, _, _ := testShard(nil, 2, 8, 1, false)
	m := &Manifest{Format: manifestFormat, Version: 1, Count: 2, Resolution: 8, Channels: 1, Levels: []int{8, 4},
		ShardSize: 2, Shards: []ShardInfo{{Key: "shards/000000.bin", First: 0, Count: 2, Bytes: int64(len(b)),
			SHA256: strings.Repeat("ab", 32)}}, Options: Options{Resolution: 8}}
	out, _ := m.Marshal()
	return out
}

func TestParseManifest(t *testing.T) {
	good := validManifest()
	if _, err := ParseManifest(good); err != nil {
		t.Fatalf("valid manifest: %v", err)
	}
	for _, tc := range []struct{ from, to, want string }{
		{`"count": 2`, `"count": 3`, "count 3"},
		{`"resolution": 8,`, `"resolution": 12,`, "not a power of two"},
		{`"channels": 1`, `"channels": 2`, "2 channels"},
		{`"shards/000000.bin"`, `"../x"`, "invalid key"},
		{`"format": "gantry-dataset"`, `"format": "other"`, "format"},
		{`"sha256": "abab`, `"sha256": "zzab`, "sha256"},
		{`"levels": [`, `"levels": [16,`, "levels"},
	} {
		bad := strings.Replace(string(good), tc.from, tc.to, 1)
		if bad == string(good) {
			t.Fatalf("replacement %q not found", tc.from)
		}
		if _, err := ParseManifest([]byte(bad)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s -> %s: %v, want an error mentioning %q", tc.from, tc.to, err, tc.want)
		}
	}
	if _, err := ParseManifest(append(good, '{')); err == nil {
		t.Error("trailing data accepted")
	}
}

func FuzzParseManifest(f *testing.F) {
	f.Add(validManifest())
	f.Add([]byte(`{"format":"gantry-dataset","version":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		out, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseManifest(out); err != nil {
			t.Fatalf("re-encoded manifest rejected: %v", err)
		}
	})
}
