package dataset

import (
	"math"
	"sync"
)

// kernel is a resampling filter: its support radius and weight function.
type kernel struct {
	support float64
	f       func(x float64) float64
}

var kernels = map[string]kernel{
	"box": {0.5, func(x float64) float64 {
		if x >= -0.5 && x < 0.5 {
			return 1
		}
		return 0
	}},
	"bilinear": {1, func(x float64) float64 {
		x = math.Abs(x)
		if x < 1 {
			return 1 - x
		}
		return 0
	}},
	// Catmull-Rom (a = -0.5), the usual "bicubic".
	"bicubic": {2, func(x float64) float64 {
		const a = -0.5
		x = math.Abs(x)
		switch {
		case x < 1:
			return ((a+2)*x-(a+3))*x*x + 1
		case x < 2:
			return ((a*x-5*a)*x+8*a)*x - 4*a
		}
		return 0
	}},
	"lanczos": {3, func(x float64) float64 {
		if x == 0 {
			return 1
		}
		if x <= -3 || x >= 3 {
			return 0
		}
		px := math.Pi * x
		return 3 * math.Sin(px) * math.Sin(px/3) / (px * px)
	}},
}

// weights holds, for each output index, the first input index and the normalised weights.
type weights struct {
	start []int
	w     [][]float32
}

// axisWeights computes resampling weights from n inputs to m outputs. Downsampling widens
// the kernel by the scale so that it also low-passes (antialiasing), as PIL does.
func axisWeights(n, m int, k kernel) weights {
	scale := float64(n) / float64(m)
	fs := math.Max(scale, 1)
	support := k.support * fs
	ws := weights{start: make([]int, m), w: make([][]float32, m)}
	for i := range m {
		center := (float64(i) + 0.5) * scale
		lo := max(int(math.Floor(center-support)), 0)
		hi := min(int(math.Ceil(center+support)), n)
		row := make([]float64, 0, hi-lo)
		sum := 0.0
		for j := lo; j < hi; j++ {
			v := k.f((float64(j) + 0.5 - center) / fs)
			row = append(row, v)
			sum += v
		}
		// Trim zero weights at both ends.
		a, b := 0, len(row)
		for a < b && row[a] == 0 {
			a++
		}
		for b > a && row[b-1] == 0 {
			b--
		}
		ws.start[i] = lo + a
		out := make([]float32, b-a)
		for j := range out {
			out[j] = float32(row[a+j] / sum)
		}
		ws.w[i] = out
	}
	return ws
}

// resize resamples square planes of side n to side m with the named filter ("nearest" or a
// key of kernels).
func resize(planes [][]float32, n, m int, filter string) [][]float32 {
	if n == m {
		return planes
	}
	out := make([][]float32, len(planes))
	if filter == "nearest" {
		idx := make([]int, m)
		for i := range idx {
			idx[i] = min(int((float64(i)+0.5)*float64(n)/float64(m)), n-1)
		}
		for k, p := range planes {
			q := make([]float32, m*m)
			for y := range m {
				for x := range m {
					q[y*m+x] = p[idx[y]*n+idx[x]]
				}
			}
			out[k] = q
		}
		return out
	}
	ws := cachedWeights(n, m, filter)
	tmp := make([]float32, n*m) // n rows of m columns
	for k, p := range planes {
		for y := range n {
			src := p[y*n : (y+1)*n]
			dst := tmp[y*m : (y+1)*m]
			for x := range m {
				s := float32(0)
				for j, w := range ws.w[x] {
					s += src[ws.start[x]+j] * w
				}
				dst[x] = s
			}
		}
		q := make([]float32, m*m)
		for y := range m {
			dst := q[y*m : (y+1)*m]
			for j, w := range ws.w[y] {
				src := tmp[(ws.start[y]+j)*m : (ws.start[y]+j+1)*m]
				for x := range dst {
					dst[x] += src[x] * w
				}
			}
		}
		out[k] = q
	}
	return out
}

// premultiply multiplies colour planes by alpha (the last plane) for resampling.
func premultiply(planes [][]float32, undo bool) {
	a := planes[len(planes)-1]
	for _, p := range planes[:len(planes)-1] {
		for i := range p {
			if !undo {
				p[i] *= a[i] / 255
			} else if a[i] > 0 {
				p[i] = p[i] * 255 / a[i]
			} else {
				p[i] = 0
			}
		}
	}
}

type weightsKey struct {
	n, m   int
	filter string
}

// weightCache holds axis weights by size pair: imports resize thousands of images between
// the same few sizes.
var weightCache sync.Map // weightsKey -> weights

func cachedWeights(n, m int, filter string) weights {
	k := weightsKey{n, m, filter}
	if w, ok := weightCache.Load(k); ok {
		return w.(weights)
	}
	w := axisWeights(n, m, kernels[filter])
	weightCache.Store(k, w)
	return w
}
