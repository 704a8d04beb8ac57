// Package swd computes the sliced Wasserstein distance between two sets of images, the metric
// of Progressive GAN (Karras et al. 2018), which needs no pretrained network. Gantry reports it
// at snapshots over N generated against N real images.
//
// The recipe, per set:
//
//   - a Laplacian pyramid of each image, from its resolution down to 16 px (a 5x5 binomial
//     filter [1,4,6,4,1] x [1,4,6,4,1] / 256 with mirrored edges; each level but the coarsest
//     is the difference between the image and the upsampled next level);
//   - 128 random 7x7xC patches per image per level (descriptors), lying inside the image;
//   - each channel of the descriptors normalised to mean 0, standard deviation 1 over the set.
//
// Then, per level, 4 repeats of 128 random unit directions; both sets' descriptors are
// projected on each direction and sorted, and the distance is the mean absolute difference of
// the sorted projections, averaged over all directions. Each level's value is multiplied by
// 1000; the result also holds their average.
//
// Choices this package makes where PG's recipe is silent:
//
//   - Images smaller than 16 px (the 4x4 and 8x8 stages of progressive growing) have a single
//     level, the image itself. Patches are 7x7 when the image is at least 7 px wide, else the
//     largest odd size that fits (3x3 at 4x4).
//   - Patch positions depend only on the seed, the level and the image's index, so both sets
//     are sampled at the same positions. This makes the distance exactly symmetric and exactly
//     0 for identical sets, and lowers its variance; directions depend only on the seed and the
//     level.
//   - A channel with zero variance over a set is left unscaled (its values are all equal).
package swd

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
)

// Images is a set of N images of C channels, H x W pixels, stored NCHW as float32. The value
// range does not matter (descriptors are normalised); Gantry uses [-1, 1].
type Images struct {
	N, C, H, W int
	Data       []float32
}

// FromUint8 returns an image set from NCHW bytes in [0, 255].
func FromUint8(n, c, h, w int, data []uint8) Images {
	f := make([]float32, len(data))
	for i, v := range data {
		f[i] = float32(v)
	}
	return Images{N: n, C: c, H: h, W: w, Data: f}
}

func (im Images) check() error {
	if im.N < 1 || im.C < 1 || im.H < 1 || im.W < 1 {
		return fmt.Errorf("swd: image set %dx%dx%dx%d is empty", im.N, im.C, im.H, im.W)
	}
	if im.H != im.W {
		return fmt.Errorf("swd: images are %dx%d; only square images are supported", im.H, im.W)
	}
	if im.H < 3 {
		return fmt.Errorf("swd: images are %dx%d; at least 3x3 is needed for a patch", im.H, im.W)
	}
	if len(im.Data) != im.N*im.C*im.H*im.W {
		return fmt.Errorf("swd: image set %dx%dx%dx%d needs %d values, has %d", im.N, im.C, im.H, im.W,
			im.N*im.C*im.H*im.W, len(im.Data))
	}
	for i, v := range im.Data {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("swd: image %d holds a non-finite value", i/(im.C*im.H*im.W))
		}
	}
	return nil
}

// Options are PG's parameters; zero fields take PG's values.
type Options struct {
	Seed            uint64 // patch positions and directions
	PatchesPerImage int    // 128
	PatchSize       int    // 7 (odd)
	Repeats         int    // 4
	DirsPerRepeat   int    // 128
	MinResolution   int    // 16: the coarsest pyramid level
	// Workers is the number of goroutines (default GOMAXPROCS).
	Workers int
	// MatMul, when set, computes c[m x n] = a[m x k] * b[k x n] (row-major, c overwritten)
	// for the projections; a BLAS-backed one makes large sets much faster. It is called from
	// several goroutines at once, with a = the same descriptor matrix of a set many times and
	// n up to 64 directions. Nil uses the pure Go kernel.
	MatMul func(m, n, k int, a, b, c []float32) error
}

func (o Options) withDefaults() Options {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&o.PatchesPerImage, 128)
	def(&o.PatchSize, 7)
	def(&o.Repeats, 4)
	def(&o.DirsPerRepeat, 128)
	def(&o.MinResolution, 16)
	def(&o.Workers, runtime.GOMAXPROCS(0))
	return o
}

func (o Options) check() error {
	if o.PatchesPerImage < 1 || o.Repeats < 1 || o.DirsPerRepeat < 1 || o.Workers < 1 {
		return errors.New("swd: patches, repeats, directions and workers must be >= 1")
	}
	if o.PatchSize < 1 || o.PatchSize%2 == 0 {
		return fmt.Errorf("swd: patch size %d must be odd and >= 1", o.PatchSize)
	}
	if o.MinResolution < 1 {
		return fmt.Errorf("swd: minimum resolution %d must be >= 1", o.MinResolution)
	}
	return nil
}

// Result is the distance per pyramid level (x1000, finest first) and their average.
type Result struct {
	Resolutions []int     // resolution of each level
	PerLevel    []float64 // distance x 1000
	Average     float64
}

// Set holds the normalised descriptors of one image set, ready to be compared with another set
// prepared with the same options and image count (the real images are prepared once).
type Set struct {
	opt    Options
	n      int // images
	c      int // channels
	levels []level
}

type level struct {
	res   int
	patch int       // patch size at this level
	dim   int       // descriptor length: c*patch*patch
	desc  []float32 // n*PatchesPerImage descriptors of dim values
	count int       // descriptors
}

// Distance computes the sliced Wasserstein distance between two image sets of the same shape.
func Distance(a, b Images, opt Options) (Result, error) {
	if a.N != b.N || a.C != b.C || a.H != b.H || a.W != b.W {
		return Result{}, fmt.Errorf("swd: sets differ in shape: %dx%dx%dx%d vs %dx%dx%dx%d",
			a.N, a.C, a.H, a.W, b.N, b.C, b.H, b.W)
	}
	sa, err := Prepare(a, opt)
	if err != nil {
		return Result{}, err
	}
	sb, err := Prepare(b, opt)
	if err != nil {
		return Result{}, err
	}
	return sa.Distance(sb)
}

// Resolutions returns the pyramid levels used for images of resolution res: res, res/2, ...
// down to minRes, or just res when res < minRes.
func Resolutions(res, minRes int) []int {
	out := []int{res}
	for r := res / 2; r >= minRes && r >= 1; r /= 2 {
		out = append(out, r)
	}
	return out
}

// Prepare builds the pyramid and the normalised descriptors of a set.
func Prepare(im Images, opt Options) (*Set, error) {
	opt = opt.withDefaults()
	if err := opt.check(); err != nil {
		return nil, err
	}
	if err := im.check(); err != nil {
		return nil, err
	}
	resList := Resolutions(im.H, opt.MinResolution)
	s := &Set{opt: opt, n: im.N, c: im.C, levels: make([]level, len(resList))}
	for li, r := range resList {
		p := min(opt.PatchSize, r)
		if p%2 == 0 {
			p--
		}
		dim := im.C * p * p
		cnt := im.N * opt.PatchesPerImage
		s.levels[li] = level{res: r, patch: p, dim: dim, count: cnt, desc: make([]float32, cnt*dim)}
	}
	// Each worker builds the pyramids of a range of images and cuts their patches.
	var wg sync.WaitGroup
	chunk := (im.N + opt.Workers - 1) / opt.Workers
	for w := 0; w < opt.Workers; w++ {
		lo, hi := w*chunk, min((w+1)*chunk, im.N)
		if lo >= hi {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.describe(im, lo, hi)
		}()
	}
	wg.Wait()
	for li := range s.levels {
		s.levels[li].normalise(im.C)
	}
	return s, nil
}

// describe fills the descriptors of images [lo, hi).
func (s *Set) describe(im Images, lo, hi int) {
	plane := im.H * im.W
	levels := len(s.levels)
	pyr := make([][]float32, levels) // per level: C planes
	for i := lo; i < hi; i++ {
		img := im.Data[i*im.C*plane : (i+1)*im.C*plane]
		laplacian(img, im.C, im.H, levels, pyr)
		for li := range s.levels {
			lv := &s.levels[li]
			s.cutPatches(lv, pyr[li], i, li)
		}
	}
}

// cutPatches writes image i's descriptors at level li.
func (s *Set) cutPatches(lv *level, planes []float32, i, li int) {
	r, p, h := lv.res, lv.patch, lv.patch/2
	rng := rand.New(rand.NewPCG(s.opt.Seed, uint64(li)<<40|uint64(i)))
	span := r - 2*h // valid centres per axis: [h, r-h)
	for k := 0; k < s.opt.PatchesPerImage; k++ {
		cy := h + rng.IntN(span)
		cx := h + rng.IntN(span)
		d := lv.desc[(i*s.opt.PatchesPerImage+k)*lv.dim:][:lv.dim]
		o := 0
		for c := 0; c < s.c; c++ {
			pl := planes[c*r*r:]
			for y := cy - h; y < cy-h+p; y++ {
				copy(d[o:o+p], pl[y*r+cx-h:])
				o += p
			}
		}
	}
}

// normalise brings each channel to mean 0 and standard deviation 1 over the level's
// descriptors.
func (lv *level) normalise(channels int) {
	pp := lv.patch * lv.patch
	for c := 0; c < channels; c++ {
		var sum, sq float64
		for j := 0; j < lv.count; j++ {
			for _, v := range lv.desc[j*lv.dim+c*pp:][:pp] {
				sum += float64(v)
				sq += float64(v) * float64(v)
			}
		}
		n := float64(lv.count * pp)
		mean := sum / n
		std := math.Sqrt(math.Max(sq/n-mean*mean, 0))
		scale := 1.0
		if std > 1e-12*math.Max(1, math.Abs(mean)) {
			scale = 1 / std
		}
		m, sc := float32(mean), float32(scale)
		for j := 0; j < lv.count; j++ {
			seg := lv.desc[j*lv.dim+c*pp:][:pp]
			for k := range seg {
				seg[k] = (seg[k] - m) * sc
			}
		}
	}
}

// Distance compares two prepared sets. They must come from image sets of the same shape with
// the same options.
func (s *Set) Distance(o *Set) (Result, error) {
	if s.n != o.n || s.c != o.c || len(s.levels) != len(o.levels) || s.levels[0].res != o.levels[0].res {
		return Result{}, fmt.Errorf("swd: sets differ in shape: %d images of %d channels at %d px vs %d of %d at %d px",
			s.n, s.c, s.levels[0].res, o.n, o.c, o.levels[0].res)
	}
	a, b := s.opt, o.opt
	if a.Seed != b.Seed || a.PatchesPerImage != b.PatchesPerImage || a.PatchSize != b.PatchSize ||
		a.Repeats != b.Repeats || a.DirsPerRepeat != b.DirsPerRepeat || a.MinResolution != b.MinResolution {
		return Result{}, errors.New("swd: sets were prepared with different options")
	}
	res := Result{}
	for li := range s.levels {
		d, err := s.opt.levelDistance(li, &s.levels[li], &o.levels[li])
		if err != nil {
			return Result{}, err
		}
		res.Resolutions = append(res.Resolutions, s.levels[li].res)
		res.PerLevel = append(res.PerLevel, d*1000)
		res.Average += d * 1000
	}
	res.Average /= float64(len(s.levels))
	return res, nil
}

// directions returns the level's Repeats*DirsPerRepeat random unit directions of length dim,
// stored as a dim x total matrix (row-major).
func (o Options) directions(li, dim int) ([]float32, int) {
	total := o.Repeats * o.DirsPerRepeat
	rng := rand.New(rand.NewPCG(o.Seed^0x9e3779b97f4a7c15, uint64(li)))
	dirs := make([]float32, dim*total)
	col := make([]float64, dim)
	for j := 0; j < total; j++ {
		var norm float64
		for k := range col {
			col[k] = rng.NormFloat64()
			norm += col[k] * col[k]
		}
		norm = math.Sqrt(norm)
		for k := range col {
			dirs[k*total+j] = float32(col[k] / norm)
		}
	}
	return dirs, total
}

// block is the number of directions projected in one pass over the descriptors: 16 for the
// Go kernel, 64 for a MatMul hook (fewer, larger calls).
const (
	block     = 16
	hookBlock = 64
)

// levelDistance is the mean over all directions of the mean absolute difference between the
// sorted projections of the two sets.
func (o Options) levelDistance(li int, a, b *level) (float64, error) {
	dirs, total := o.directions(li, a.dim)
	block := block
	if o.MatMul != nil {
		block = hookBlock
	}
	nblocks := (total + block - 1) / block
	sums := make([]float64, nblocks)
	errs := make([]error, nblocks)
	var wg sync.WaitGroup
	next := make(chan int, nblocks)
	for j := 0; j < nblocks; j++ {
		next <- j
	}
	close(next)
	for w := 0; w < min(o.Workers, nblocks); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ka := make([]uint32, a.count*block)
			kb := make([]uint32, b.count*block)
			tmp := make([]uint32, a.count)
			sub := make([]float32, a.dim*block)
			var proj []float32
			if o.MatMul != nil {
				proj = make([]float32, a.count*block)
			}
			for j := range next {
				lo, hi := j*block, min((j+1)*block, total)
				nd := hi - lo
				for k := 0; k < a.dim; k++ {
					copy(sub[k*nd:(k+1)*nd], dirs[k*total+lo:k*total+hi])
				}
				if err := o.projectKeys(a, sub[:a.dim*nd], nd, ka, proj); err != nil {
					errs[j] = err
					continue
				}
				if err := o.projectKeys(b, sub[:a.dim*nd], nd, kb, proj); err != nil {
					errs[j] = err
					continue
				}
				var sum float64
				for d := 0; d < nd; d++ {
					ca, cb := ka[d*a.count:(d+1)*a.count], kb[d*b.count:(d+1)*b.count]
					radixSort(ca, tmp)
					radixSort(cb, tmp)
					var s float64
					for r, k := range ca {
						s += math.Abs(float64(fromKey(k) - fromKey(cb[r])))
					}
					sum += s / float64(a.count)
				}
				sums[j] = sum
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return 0, fmt.Errorf("swd: projection: %w", err)
		}
	}
	var total64 float64
	for _, s := range sums {
		total64 += s
	}
	return total64 / float64(total), nil
}

// projectKeys projects the level's descriptors on nd directions (dirs is dim x nd) and writes
// the sort keys of the projections direction by direction: keys[d*count + r]. proj is scratch
// for the MatMul hook.
func (o Options) projectKeys(lv *level, dirs []float32, nd int, keys []uint32, proj []float32) error {
	if o.MatMul == nil {
		projectKeys(lv.count, nd, lv.dim, lv.desc, dirs, keys)
		return nil
	}
	proj = proj[:lv.count*nd]
	if err := o.MatMul(lv.count, nd, lv.dim, lv.desc, dirs, proj); err != nil {
		return err
	}
	for r := 0; r < lv.count; r++ {
		for d := 0; d < nd; d++ {
			keys[d*lv.count+r] = sortKey(proj[r*nd+d])
		}
	}
	return nil
}

// projectKeys computes the m x n product of a (m x k) and b (k x n, n small: a block of
// directions) and stores the sort key of element (r, j) at keys[j*m + r]. Two rows of a and
// four columns of b accumulate in registers at a time.
func projectKeys(m, n, k int, a, b []float32, keys []uint32) {
	r := 0
	for ; r+2 <= m; r += 2 {
		row0 := a[r*k : (r+1)*k]
		row1 := a[(r+1)*k : (r+2)*k]
		row1 = row1[:len(row0)]
		j := 0
		for ; j+4 <= n; j += 4 {
			var s0, s1, s2, s3, t0, t1, t2, t3 float32
			for i, x := range row0 {
				y := row1[i]
				bb := b[i*n+j : i*n+j+4]
				b0, b1, b2, b3 := bb[0], bb[1], bb[2], bb[3]
				s0 += x * b0
				s1 += x * b1
				s2 += x * b2
				s3 += x * b3
				t0 += y * b0
				t1 += y * b1
				t2 += y * b2
				t3 += y * b3
			}
			keys[j*m+r], keys[j*m+r+1] = sortKey(s0), sortKey(t0)
			keys[(j+1)*m+r], keys[(j+1)*m+r+1] = sortKey(s1), sortKey(t1)
			keys[(j+2)*m+r], keys[(j+2)*m+r+1] = sortKey(s2), sortKey(t2)
			keys[(j+3)*m+r], keys[(j+3)*m+r+1] = sortKey(s3), sortKey(t3)
		}
		for ; j < n; j++ {
			keys[j*m+r] = sortKey(dot(row0, b[j:], n))
			keys[j*m+r+1] = sortKey(dot(row1, b[j:], n))
		}
	}
	for ; r < m; r++ {
		row := a[r*k : (r+1)*k]
		for j := 0; j < n; j++ {
			keys[j*m+r] = sortKey(dot(row, b[j:], n))
		}
	}
}

// dot is the product of row with the column of b starting at b[0] with the given stride.
func dot(row, b []float32, stride int) float32 {
	var s float32
	for i, x := range row {
		s += x * b[i*stride]
	}
	return s
}

// sortKey maps a float32 to a uint32 whose unsigned order is the float order.
func sortKey(f float32) uint32 {
	b := math.Float32bits(f)
	if b>>31 != 0 {
		return ^b
	}
	return b | 1<<31
}

func fromKey(k uint32) float32 {
	if k>>31 != 0 {
		return math.Float32frombits(k &^ (1 << 31))
	}
	return math.Float32frombits(^k)
}

// radixSort sorts keys in place (LSD, 11+11+10 bits); tmp is scratch of the same length.
func radixSort(keys, tmp []uint32) {
	if len(keys) < 2 {
		return
	}
	var h0, h1, h2 [2048]int
	for _, k := range keys {
		h0[k&2047]++
		h1[(k>>11)&2047]++
		h2[k>>22]++
	}
	src, dst := keys, tmp[:len(keys)]
	for pass, h := range []*[2048]int{&h0, &h1, &h2} {
		shift := uint(11 * pass)
		if h[(src[0]>>shift)&2047] == len(src) {
			continue // every key has the same digit: the pass would not move anything
		}
		sum := 0
		for i := range h {
			c := h[i]
			h[i] = sum
			sum += c
		}
		for _, k := range src {
			d := (k >> shift) & 2047
			dst[h[d]] = k
			h[d]++
		}
		src, dst = dst, src
	}
	if &src[0] != &keys[0] {
		copy(keys, src)
	}
}
