package dataset

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// IDX is an IDX file of unsigned bytes (the MNIST format): Dims gives the shape, outermost
// first, and Data the values in row-major order.
type IDX struct {
	Dims []int
	Data []byte
}

// maxIDXBytes bounds the data an IDX file may declare (4 GiB).
const maxIDXBytes = 1 << 32

// ReadIDXFile reads an IDX file, gzip-compressed or not.
func ReadIDXFile(path string) (*IDX, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("dataset: IDX %s: %w", path, err)
	}
	defer f.Close()
	x, err := ReadIDX(f)
	if err != nil {
		return nil, fmt.Errorf("dataset: IDX %s: %w", path, err)
	}
	return x, nil
}

// ReadIDX parses an IDX stream, gunzipping it when it starts with the gzip magic. Only the
// unsigned byte element type (0x08) is accepted; data shorter or longer than the header
// declares is an error.
func ReadIDX(r io.Reader) (*IDX, error) {
	br := bufio.NewReader(r)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		defer zr.Close()
		br = bufio.NewReader(zr)
	}
	var hdr [4]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil, fmt.Errorf("short header: %w", err)
	}
	if hdr[0] != 0 || hdr[1] != 0 {
		return nil, fmt.Errorf("bad magic %02x%02x%02x%02x: not an IDX file", hdr[0], hdr[1], hdr[2], hdr[3])
	}
	if hdr[2] != 0x08 {
		return nil, fmt.Errorf("element type 0x%02x not supported; only unsigned bytes (0x08)", hdr[2])
	}
	nd := int(hdr[3])
	if nd < 1 || nd > 4 {
		return nil, fmt.Errorf("%d dimensions; want 1 to 4", nd)
	}
	dims := make([]int, nd)
	total := uint64(1)
	for i := range dims {
		var d [4]byte
		if _, err := io.ReadFull(br, d[:]); err != nil {
			return nil, fmt.Errorf("short header: dimension %d: %w", i, err)
		}
		v := binary.BigEndian.Uint32(d[:])
		dims[i] = int(v)
		total *= uint64(v)
		if total > maxIDXBytes {
			return nil, fmt.Errorf("header declares more than %d bytes of data", uint64(maxIDXBytes))
		}
	}
	// Grow with the data actually present rather than trusting the header's size.
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(br, int64(total)+1))
	if err != nil {
		return nil, fmt.Errorf("read data: %w", err)
	}
	if uint64(n) < total {
		return nil, fmt.Errorf("short data: header declares %v = %d bytes, file has %d", dims, total, n)
	}
	if uint64(n) > total {
		return nil, fmt.Errorf("trailing data after the %d bytes declared by dimensions %v", total, dims)
	}
	return &IDX{Dims: dims, Data: buf.Bytes()}, nil
}
