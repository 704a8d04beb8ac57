package dataset

import (
	"strings"
	"testing"
)

// TestOptionsBounds checks that out-of-range counts are refused, each naming itself, instead of
// being taken as a default (negative workers) or as "all" (report limit below -1).
func TestOptionsBounds(t *testing.T) {
	for _, c := range []struct {
		mutate func(*Options)
		want   string
	}{
		{func(o *Options) { o.MaxImages = -1 }, "max images -1"},
		{func(o *Options) { o.MaxPixels = 3 }, "max pixels 3"},
		{func(o *Options) { o.Workers = -3 }, "workers -3"},
		{func(o *Options) { o.ReportLimit = -5 }, "report limit -5"},
	} {
		o := Options{Source: "x", Resolution: 32}
		c.mutate(&o)
		_, err := o.withDefaults()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("got %v, want an error with %q", err, c.want)
		}
	}
	o := Options{Source: "x", Resolution: 32, ReportLimit: -1}
	if _, err := o.withDefaults(); err != nil {
		t.Errorf("report limit -1 (all): %v", err)
	}
}
