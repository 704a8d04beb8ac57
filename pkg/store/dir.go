package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// tmpPrefix starts the names of files being written; List skips them and Cleanup removes
// stale ones.
const tmpPrefix = ".gantry-tmp-"

// dirStore keeps objects as files under root.
type dirStore struct {
	root string
}

func openDir(p string) (*dirStore, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return nil, fmt.Errorf("store: directory %q: %w", p, err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("store: create directory %q: %w", abs, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("store: directory %q: %w", abs, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("store: %q is a file, not a directory", abs)
	}
	return &dirStore{root: abs}, nil
}

func (d *dirStore) URI() string { return "file://" + d.root }

func (d *dirStore) path(key string) (string, error) {
	if err := CheckKey(key); err != nil {
		return "", err
	}
	if strings.HasPrefix(path0(key), tmpPrefix) {
		return "", fmt.Errorf("%w: %q uses the reserved prefix %s", ErrInvalidKey, key, tmpPrefix)
	}
	return filepath.Join(d.root, filepath.FromSlash(key)), nil
}

// path0 returns the last segment of key.
func path0(key string) string {
	if i := strings.LastIndexByte(key, '/'); i >= 0 {
		return key[i+1:]
	}
	return key
}

// writeTemp copies r into a synced temporary file beside dst and returns its name.
func (d *dirStore) writeTemp(ctx context.Context, dst string, r io.Reader, size int64) (string, error) {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(filepath.Dir(dst), tmpPrefix+"*")
	if err != nil {
		return "", err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	n, err := io.Copy(f, ctxReader{ctx, r})
	if err != nil {
		return "", err
	}
	if size >= 0 && n != size {
		return "", fmt.Errorf("short upload: got %d bytes, expected %d", n, size)
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	ok = true
	return f.Name(), nil
}

func (d *dirStore) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	dst, err := d.path(key)
	if err != nil {
		return err
	}
	tmp, err := d.writeTemp(ctx, dst, r, size)
	if err != nil {
		return fmt.Errorf("store: put %s: %w", key, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("store: put %s: %w", key, err)
	}
	syncDir(filepath.Dir(dst))
	return nil
}

func (d *dirStore) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	dst, err := d.path(key)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("store: put %s: %w", key, ErrExists)
	}
	tmp, err := d.writeTemp(ctx, dst, r, size)
	if err != nil {
		return fmt.Errorf("store: put %s: %w", key, err)
	}
	defer os.Remove(tmp)
	// link fails when dst exists, which makes creation atomic and exclusive.
	if err := os.Link(tmp, dst); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("store: put %s: %w", key, ErrExists)
		}
		return fmt.Errorf("store: put %s: %w", key, err)
	}
	syncDir(filepath.Dir(dst))
	return nil
}

func (d *dirStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	p, err := d.path(key)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store: get %s: %w", key, err)
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("store: get %s: %w", key, ErrNotFound)
		}
		return nil, fmt.Errorf("store: get %s: %w", key, err)
	}
	if st, err := f.Stat(); err == nil && st.IsDir() {
		f.Close()
		return nil, fmt.Errorf("store: get %s: %w", key, ErrNotFound)
	}
	return ctxReadCloser{ctxReader{ctx, f}, f}, nil
}

func (d *dirStore) Stat(ctx context.Context, key string) (Info, error) {
	p, err := d.path(key)
	if err != nil {
		return Info{}, err
	}
	st, err := os.Stat(p)
	if err != nil || st.IsDir() {
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return Info{}, fmt.Errorf("store: stat %s: %w", key, ErrNotFound)
		}
		return Info{}, fmt.Errorf("store: stat %s: %w", key, err)
	}
	return Info{Key: key, Size: st.Size(), ModTime: st.ModTime()}, nil
}

func (d *dirStore) List(ctx context.Context, prefix string) ([]Info, error) {
	if err := checkPrefix(prefix); err != nil {
		return nil, err
	}
	var out []Info
	err := filepath.WalkDir(d.root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(d.root, p)
		key := filepath.ToSlash(rel)
		if e.IsDir() {
			// Skip directories that cannot hold a match.
			if p != d.root && !strings.HasPrefix(key+"/", prefix) && !strings.HasPrefix(prefix, key+"/") {
				return fs.SkipDir
			}
			return nil
		}
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), tmpPrefix) || !strings.HasPrefix(key, prefix) {
			return nil
		}
		st, err := e.Info()
		if err != nil {
			return nil // removed while listing
		}
		out = append(out, Info{Key: key, Size: st.Size(), ModTime: st.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: list %q: %w", prefix, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

func (d *dirStore) Delete(ctx context.Context, key string) error {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("store: delete %s: %w", key, err)
	}
	return nil
}

// EmptyDirRemover is implemented by stores whose keys live in real directories (the directory
// backend): after deleting every object under a prefix, its caller can take the directory
// away too. Object stores have no directories and do not implement it.
type EmptyDirRemover interface {
	RemoveEmptyDir(ctx context.Context, prefix string) error
}

var _ EmptyDirRemover = (*dirStore)(nil)

// RemoveEmptyDir removes the directory at prefix when it is empty (a directory that still
// holds anything, or none at all, is left alone).
func (d *dirStore) RemoveEmptyDir(ctx context.Context, prefix string) error {
	p, err := d.path(prefix)
	if err != nil {
		return err
	}
	if p == d.root {
		return nil
	}
	entries, err := os.ReadDir(p)
	if err != nil || len(entries) > 0 {
		return nil
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("store: remove directory %s: %w", prefix, err)
	}
	return nil
}

func (d *dirStore) Cleanup(ctx context.Context, prefix string, olderThan time.Duration) (int, error) {
	if err := checkPrefix(prefix); err != nil {
		return 0, err
	}
	n := 0
	cutoff := time.Now().Add(-olderThan)
	err := filepath.WalkDir(d.root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(d.root, p)
		if e.IsDir() || !strings.HasPrefix(e.Name(), tmpPrefix) || !strings.HasPrefix(filepath.ToSlash(rel), prefix) {
			return nil
		}
		if st, err := e.Info(); err == nil && st.ModTime().Before(cutoff) {
			if os.Remove(p) == nil {
				n++
			}
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("store: cleanup %q: %w", prefix, err)
	}
	return n, nil
}

func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		f.Sync()
		f.Close()
	}
}

// ctxReader stops reading once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

type ctxReadCloser struct {
	ctxReader
	io.Closer
}
