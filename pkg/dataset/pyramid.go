package dataset

import (
	"fmt"
	"math/bits"
)

// NumLevels returns the number of levels of detail for resolution r: r, r/2, ..., 4.
func NumLevels(r int) int { return bits.Len(uint(r)) - 2 }

// checkResolution accepts powers of two from 4 to 16384.
func checkResolution(r int) error {
	if r < 4 || r > 16384 || r&(r-1) != 0 {
		return fmt.Errorf("dataset: resolution %d is not a power of two from 4 to 16384 (try %d)", r, nearestPow2(r))
	}
	return nil
}

func nearestPow2(r int) int {
	if r <= 4 {
		return 4
	}
	if r >= 16384 {
		return 16384
	}
	lo := 1 << (bits.Len(uint(r)) - 1)
	if r-lo < 2*lo-r {
		return lo
	}
	return 2 * lo
}

// Pyramid computes every level of detail of one image: img holds c planes of r x r bytes
// and levels[0] is img itself. Level l is the mean of the 2^l x 2^l full-resolution pixels
// each output pixel covers, rounded half to even. That equals repeated 2x2 box averaging in
// float32 followed by rounding, as StyleGAN's dataset tool does, because every intermediate
// value is exact in float32 down to 4x4 from 16384.
func Pyramid(img []byte, c, r int) [][]byte {
	n := NumLevels(r)
	levels := make([][]byte, n)
	levels[0] = img
	if n == 1 {
		return levels
	}
	// sums[i] is the sum of the covered full-resolution pixels at the current level.
	sums := make([]uint32, len(img))
	for i, v := range img {
		sums[i] = uint32(v)
	}
	size := r
	for l := 1; l < n; l++ {
		half := size / 2
		next := make([]uint32, c*half*half)
		out := make([]byte, c*half*half)
		shift := uint(2 * l)
		mask := uint32(1)<<shift - 1
		mid := uint32(1) << (shift - 1)
		for ch := range c {
			src := sums[ch*size*size:]
			dst := next[ch*half*half:]
			o := out[ch*half*half:]
			for y := range half {
				r0 := src[2*y*size:]
				r1 := src[(2*y+1)*size:]
				for x := range half {
					s := r0[2*x] + r0[2*x+1] + r1[2*x] + r1[2*x+1]
					dst[y*half+x] = s
					q, rem := s>>shift, s&mask
					if rem > mid || (rem == mid && q&1 == 1) {
						q++
					}
					o[y*half+x] = byte(q)
				}
			}
		}
		levels[l] = out
		sums = next
		size = half
	}
	return levels
}
