package swd

// binomial is the 1-D 5-tap filter; the 2-D filter is its outer product ([1,4,6,4,1]^2 / 256).
var binomial = [5]float32{1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16}

// mirror reflects an index about the edge samples (…, 2, 1 | 0, 1, …, n-1 | n-2, …), the
// "mirror" mode of scipy.ndimage and BORDER_REFLECT_101 of OpenCV.
func mirror(i, n int) int {
	if n == 1 {
		return 0
	}
	for i < 0 || i >= n {
		if i < 0 {
			i = -i
		}
		if i >= n {
			i = 2*(n-1) - i
		}
	}
	return i
}

// laplacian builds the Laplacian pyramid of one image (c planes of h x h) into pyr: pyr[0] at
// h, pyr[1] at h/2, ...; every level but the last holds the detail lost by the next one, the
// last holds the low-pass image. Buffers in pyr are reused when large enough.
func laplacian(img []float32, c, h, levels int, pyr [][]float32) {
	pyr[0] = grow(pyr[0], len(img))
	copy(pyr[0], img)
	var up, tmp, upTmp []float32
	for l := 1; l < levels; l++ {
		n := h >> (l - 1)
		m := n / 2
		pyr[l] = grow(pyr[l], c*m*m)
		tmp = grow(tmp, n*m)
		up = grow(up, n*n)
		upTmp = grow(upTmp, m*n)
		for ch := 0; ch < c; ch++ {
			src := pyr[l-1][ch*n*n : (ch+1)*n*n]
			dst := pyr[l][ch*m*m : (ch+1)*m*m]
			pyrDown(src, n, dst, tmp)
			pyrUp(dst, m, up, upTmp)
			for i := range src {
				src[i] -= up[i]
			}
		}
	}
}

func grow(b []float32, n int) []float32 {
	if cap(b) < n {
		return make([]float32, n)
	}
	return b[:n]
}

// pyrDown blurs an n x n plane with the binomial filter (mirrored edges) and keeps the even
// rows and columns: dst is n/2 x n/2. tmp holds n x n/2 values.
func pyrDown(src []float32, n int, dst, tmp []float32) {
	m := n / 2
	// Horizontal pass at even columns.
	for y := 0; y < n; y++ {
		row := src[y*n : (y+1)*n]
		for x := 0; x < m; x++ {
			cx := 2 * x
			var s float32
			for t := -2; t <= 2; t++ {
				s += binomial[t+2] * row[mirror(cx+t, n)]
			}
			tmp[y*m+x] = s
		}
	}
	// Vertical pass at even rows.
	for y := 0; y < m; y++ {
		cy := 2 * y
		out := dst[y*m : (y+1)*m]
		for i := range out {
			out[i] = 0
		}
		for t := -2; t <= 2; t++ {
			w := binomial[t+2]
			row := tmp[mirror(cy+t, n)*m:][:m]
			for x := range out {
				out[x] += w * row[x]
			}
		}
	}
}

// pyrUp inserts zeros between the samples of an m x m plane and filters the 2m x 2m result
// with 4 times the binomial filter (mirrored edges), so that a constant plane stays constant.
// tmp holds m x 2m values.
func pyrUp(src []float32, m int, dst, tmp []float32) {
	n := 2 * m
	// Horizontal: tmp[y][x] for the m source rows, at all 2m columns.
	for y := 0; y < m; y++ {
		row := src[y*m : (y+1)*m]
		for x := 0; x < n; x++ {
			var s float32
			for t := -2; t <= 2; t++ {
				j := mirror(x+t, n)
				if j%2 == 0 {
					s += 2 * binomial[t+2] * row[j/2]
				}
			}
			tmp[y*n+x] = s
		}
	}
	// Vertical: rows of the zero-inserted grid at odd positions are zero.
	for y := 0; y < n; y++ {
		out := dst[y*n : (y+1)*n]
		for i := range out {
			out[i] = 0
		}
		for t := -2; t <= 2; t++ {
			j := mirror(y+t, n)
			if j%2 != 0 {
				continue
			}
			w := 2 * binomial[t+2]
			row := tmp[(j/2)*n:][:n]
			for x := range out {
				out[x] += w * row[x]
			}
		}
	}
}
