// Package model is the original StyleGAN (Karras et al. 2019) with progressive growing, on
// package autograd: the mapping and synthesis networks of the generator, the
// discriminator, their parameters in flat buffers, and the fades between resolutions.
//
// The networks compute at the current resolution 2^(log2 R - floor(lod)) rather than at R:
// a nearest-upsampled image box-downsampled again is the image itself, so this is exactly
// SG's growing, without the wasted work at low resolutions. During a fade the fraction
// lod - floor(lod) blends the new block's toRGB/fromRGB with the previous one's.
package model

import (
	"fmt"
	"math"
	"math/bits"
)

// Config fixes a StyleGAN architecture.
type Config struct {
	Resolution    int     // final image size R (a power of 2, >= 4)
	Channels      int     // image channels: 1, 3 or 4
	ZDim          int     // latent z width
	WDim          int     // intermediate latent w width
	MappingLayers int     // dense layers of the mapping network
	MappingLRMul  float64 // learning-rate multiplier of the mapping network (0.01)
	FmapBase      int     // channel count formula: min(base / 2^(stage*decay), max)
	FmapDecay     float64
	FmapMax       int
	MbstdGroup    int // minibatch-stddev group size (4; 0 or 1: no minibatch-stddev layer)
	MbstdFeatures int // minibatch-stddev features (1)
	UseNoise      bool
	// Blur is the 1-D blur filter after upsampling in G and before downsampling in D
	// (SG: [1,2,1]); it is normalised to sum 1. Empty: no blur.
	Blur []float64
	// FusedScaleMin is the smallest resolution that uses the fused transposed/strided 4x4
	// convolutions instead of nearest-up/average-down (SG: 128).
	FusedScaleMin int
}

// SG1024 is SG's FFHQ configuration.
func SG1024() Config {
	return Config{Resolution: 1024, Channels: 3, ZDim: 512, WDim: 512, MappingLayers: 8,
		MappingLRMul: 0.01, FmapBase: 8192, FmapDecay: 1, FmapMax: 512, MbstdGroup: 4,
		MbstdFeatures: 1, FusedScaleMin: 128, UseNoise: true, Blur: []float64{1, 2, 1}}
}

// Validate reports the first unusable field.
func (c Config) Validate() error {
	switch {
	case c.Resolution < 4 || c.Resolution&(c.Resolution-1) != 0:
		return fmt.Errorf("model: resolution %d is not a power of 2 >= 4", c.Resolution)
	case c.Channels != 1 && c.Channels != 3 && c.Channels != 4:
		return fmt.Errorf("model: channels %d (1, 3 or 4)", c.Channels)
	case c.ZDim < 1 || c.WDim < 1 || c.MappingLayers < 1:
		return fmt.Errorf("model: z %d, w %d, mapping layers %d must be positive", c.ZDim, c.WDim, c.MappingLayers)
	case c.FmapBase < 1 || c.FmapMax < 1 || c.FmapDecay < 0:
		return fmt.Errorf("model: fmap base %d, max %d, decay %g out of range", c.FmapBase, c.FmapMax, c.FmapDecay)
	case c.MbstdGroup < 0 || c.MbstdFeatures < 1:
		return fmt.Errorf("model: minibatch stddev group %d, features %d must be positive", c.MbstdGroup, c.MbstdFeatures)
	case len(c.Blur) > 16:
		return fmt.Errorf("model: blur filter of %d taps (at most 16)", len(c.Blur))
	case c.MappingLRMul <= 0:
		return fmt.Errorf("model: mapping lr multiplier %g must be positive", c.MappingLRMul)
	}
	return nil
}

// Log2R is log2 of the final resolution.
func (c Config) Log2R() int { return bits.TrailingZeros(uint(c.Resolution)) }

// NF is the channel count of a stage: min(fmap_base / 2^(stage*decay), fmap_max).
func (c Config) NF(stage int) int {
	v := int(float64(c.FmapBase) / math.Pow(2, float64(stage)*c.FmapDecay))
	return max(min(v, c.FmapMax), 1)
}

// NumLayers is the number of style inputs of the synthesis network (18 at 1024).
func (c Config) NumLayers() int { return 2*c.Log2R() - 2 }

// fused reports whether resolution 2^res uses fused up/down convolutions.
func (c Config) fused(res int) bool { return c.FusedScaleMin > 0 && 1<<res >= c.FusedScaleMin }

// LevelAt splits a level of detail into the current resolution's log2 and the fade
// fraction (0: the newest block fully in; towards 1: mostly the previous one).
func (c Config) LevelAt(lod float64) (res int, fade float32) {
	lod = math.Max(0, math.Min(lod, float64(c.Log2R()-2)))
	fl := math.Floor(lod)
	return c.Log2R() - int(fl), float32(lod - fl)
}

// mbstd reports whether D has a minibatch-stddev layer.
func (c Config) mbstd() bool { return c.MbstdGroup > 1 }

// blurTaps returns the normalised blur filter, nil for none.
func (c Config) blurTaps() []float32 {
	var sum float64
	for _, v := range c.Blur {
		sum += v
	}
	if len(c.Blur) == 0 || sum == 0 {
		return nil
	}
	out := make([]float32, len(c.Blur))
	for i, v := range c.Blur {
		out[i] = float32(v / sum)
	}
	return out
}
