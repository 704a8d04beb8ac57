package dataset

import (
	"encoding/hex"
	"fmt"
	"image/color"
	"strings"
)

// Options control an import. The zero value of each field means its default.
type Options struct {
	Source       string `json:"source"`                  // folder, .zip or IDX image file
	Labels       string `json:"labels,omitempty"`        // IDX label file for an IDX source
	ClassFolders bool   `json:"class_folders,omitempty"` // label = index of the top folder
	Resolution   int    `json:"resolution"`              // output resolution, a power of two
	Square       string `json:"square"`                  // crop (default) or pad
	Filter       string `json:"filter"`                  // lanczos (default), bicubic, bilinear, box, nearest, none
	Channels     string `json:"channels"`                // keep (default), gray, rgb, rgba
	Background   string `json:"background"`              // hex RGB for padding and compositing (default ffffff)
	MaxImages    int    `json:"max_images,omitempty"`    // stop after this many images (0: all)
	OnError      string `json:"on_error"`                // skip (default) or stop
	ShardSize    int    `json:"shard_size"`              // images per shard (default 2048)
	MaxPixels    int64  `json:"max_pixels"`              // refuse larger images (default 8192*8192)
	// Workers is the number of decoding goroutines (default GOMAXPROCS). It does not change
	// the output and is not recorded.
	Workers int `json:"-"`
	// ReportLimit caps the per-file lines printed per kind (default 20, -1 for all).
	ReportLimit int `json:"-"`
}

var (
	squarePolicies  = []string{"crop", "pad"}
	filterNames     = []string{"lanczos", "bicubic", "bilinear", "box", "nearest", "none"}
	channelPolicies = []string{"keep", "gray", "rgb", "rgba"}
	errorPolicies   = []string{"skip", "stop"}
)

func oneOf(name, v string, allowed []string) error {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return fmt.Errorf("dataset: %s %q; want one of %s", name, v, strings.Join(allowed, ", "))
}

// withDefaults fills defaults and validates.
func (o Options) withDefaults() (Options, error) {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&o.Square, "crop")
	def(&o.Filter, "lanczos")
	def(&o.Channels, "keep")
	def(&o.Background, "ffffff")
	def(&o.OnError, "skip")
	if o.ShardSize == 0 {
		o.ShardSize = 2048
	}
	if o.MaxPixels == 0 {
		o.MaxPixels = 8192 * 8192
	}
	if o.ReportLimit == 0 {
		o.ReportLimit = 20
	}
	if o.Source == "" {
		return o, fmt.Errorf("dataset: no source; give a folder, a .zip or an IDX image file")
	}
	if err := checkResolution(o.Resolution); err != nil {
		return o, err
	}
	for _, c := range []struct {
		name, v string
		allowed []string
	}{{"square policy", o.Square, squarePolicies}, {"filter", o.Filter, filterNames},
		{"channel policy", o.Channels, channelPolicies}, {"on-error policy", o.OnError, errorPolicies}} {
		if err := oneOf(c.name, c.v, c.allowed); err != nil {
			return o, err
		}
	}
	if _, err := parseColor(o.Background); err != nil {
		return o, err
	}
	if o.ShardSize < 1 || o.ShardSize > maxShardN {
		return o, fmt.Errorf("dataset: shard size %d; want 1 to %d", o.ShardSize, maxShardN)
	}
	if o.MaxImages < 0 {
		return o, fmt.Errorf("dataset: max images %d; want >= 0 (0: all)", o.MaxImages)
	}
	if o.MaxPixels < 16 {
		return o, fmt.Errorf("dataset: max pixels %d; want >= 16", o.MaxPixels)
	}
	if o.Workers < 0 {
		return o, fmt.Errorf("dataset: workers %d; want >= 0 (0: one per CPU)", o.Workers)
	}
	if o.ReportLimit < -1 {
		return o, fmt.Errorf("dataset: report limit %d; want -1 (all) or more", o.ReportLimit)
	}
	return o, nil
}

// parseColor reads "rrggbb" (with or without '#').
func parseColor(s string) (color.NRGBA, error) {
	b, err := hex.DecodeString(strings.TrimPrefix(s, "#"))
	if err != nil || len(b) != 3 {
		return color.NRGBA{}, fmt.Errorf("dataset: background %q; want six hex digits like ffffff", s)
	}
	return color.NRGBA{b[0], b[1], b[2], 255}, nil
}
