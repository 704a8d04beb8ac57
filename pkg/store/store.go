// Package store is Gantry's object store: one small interface over the places datasets and
// checkpoints live, with two backends. A URI picks the backend: "s3://bucket/prefix" talks to
// any S3-compatible service through minio-go, and a plain path or "file:///path" uses a local
// directory.
//
// Both backends give the same guarantees, which the checkpoint and dataset code rely on:
//
//   - A Put is all or nothing. Readers see the previous object or the complete new one, never a
//     prefix of it (S3 commits on the final request; the directory backend writes a hidden
//     temporary file, syncs it and renames it into place).
//   - PutIfAbsent creates an object only when none exists under its key (If-None-Match: * on
//     S3, link(2) on a directory), so a commit marker can be written once.
//   - Uploads carry a checksum the server verifies (CRC32C on S3).
//   - Transient failures (connection refused or reset, timeouts, 5xx, throttling) are retried
//     with exponential backoff; a retried Put restarts from the beginning of its reader when
//     the reader can seek, and fails with a clear error otherwise.
//   - Every call takes a context and stops when it is cancelled.
//   - Cleanup removes what interrupted uploads leave behind (incomplete multipart uploads,
//     stale temporary files).
//
// Keys are slash-separated relative names ("shards/shard-00001.bin"); "..", "." and empty
// segments are refused so that no key can escape its prefix.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"
)

// ErrNotFound is returned (wrapped) when an object does not exist.
var ErrNotFound = errors.New("store: object not found")

// ErrExists is returned (wrapped) by PutIfAbsent when an object already exists under the key.
var ErrExists = errors.New("store: object already exists")

// ErrInvalidKey is returned (wrapped) for keys that are empty, absolute or leave their prefix.
var ErrInvalidKey = errors.New("store: invalid key")

// Info describes one stored object.
type Info struct {
	Key     string    // key relative to the store's prefix
	Size    int64     // bytes
	ModTime time.Time // last modification
	ETag    string    // entity tag (S3) or empty (directory)
}

// Store is an object store rooted at a prefix. Implementations are safe for concurrent use.
type Store interface {
	// Put writes the object key from r. size is the number of bytes r yields, or -1 when
	// unknown. The object appears only once it is complete.
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// PutIfAbsent is Put that fails with ErrExists when the object already exists.
	PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error
	// Get opens the object for reading; the caller closes it.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// Stat describes the object, or fails with ErrNotFound.
	Stat(ctx context.Context, key string) (Info, error)
	// List returns every object whose key starts with prefix, sorted by key.
	List(ctx context.Context, prefix string) ([]Info, error)
	// Delete removes the object; deleting a missing object is not an error.
	Delete(ctx context.Context, key string) error
	// Cleanup removes leftovers of interrupted uploads under prefix older than olderThan
	// and returns how many it removed.
	Cleanup(ctx context.Context, prefix string, olderThan time.Duration) (int, error)
	// URI returns the URI the store was opened with, normalised.
	URI() string
}

// Open returns the store for uri: "s3://bucket/prefix", "file:///abs/path" or a plain
// directory path (created when missing).
func Open(ctx context.Context, uri string, cfg Config) (Store, error) {
	switch {
	case strings.HasPrefix(uri, "s3://"):
		return openS3(ctx, uri, cfg)
	case strings.HasPrefix(uri, "file://"):
		p := strings.TrimPrefix(uri, "file://")
		if p == "" || !strings.HasPrefix(p, "/") {
			return nil, fmt.Errorf("store: %q: file URIs need an absolute path (file:///dir)", uri)
		}
		return openDir(p)
	case strings.Contains(uri, "://"):
		return nil, fmt.Errorf("store: %q: unsupported scheme; use s3://bucket/prefix, file:///dir or a path", uri)
	case uri == "":
		return nil, fmt.Errorf("store: empty URI; use s3://bucket/prefix, file:///dir or a path")
	default:
		return openDir(uri)
	}
}

// OpenExisting is Open for readers: a directory URI must name an existing directory, which
// Open would create (a mistyped dataset or checkpoint path then left an empty directory behind
// and failed later with a less direct error).
func OpenExisting(ctx context.Context, uri string, cfg Config) (Store, error) {
	p := uri
	if strings.HasPrefix(uri, "file://") {
		p = strings.TrimPrefix(uri, "file://")
	}
	if p != "" && !strings.Contains(p, "://") {
		fi, err := os.Stat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("store: %q: no such directory", uri)
		case err != nil:
			return nil, fmt.Errorf("store: %q: %w", uri, err)
		case !fi.IsDir():
			return nil, fmt.Errorf("store: %q is a file, not a directory", uri)
		}
	}
	return Open(ctx, uri, cfg)
}

// ReadAll reads the whole object key.
func ReadAll(ctx context.Context, s Store, key string) ([]byte, error) {
	rc, err := s.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("store: read %s: %w", key, err)
	}
	return b, nil
}

// CheckKey reports whether key is a valid object key: relative, slash-separated, without
// empty, "." or ".." segments.
func CheckKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty", ErrInvalidKey)
	}
	if strings.HasPrefix(key, "/") || strings.Contains(key, "\\") || strings.ContainsRune(key, 0) {
		return fmt.Errorf("%w: %q must be relative and slash-separated", ErrInvalidKey, key)
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("%w: %q has an empty, . or .. segment", ErrInvalidKey, key)
		}
	}
	if path.Clean(key) != key {
		return fmt.Errorf("%w: %q is not clean", ErrInvalidKey, key)
	}
	return nil
}

// checkPrefix accepts "" or a key-like prefix that may end in "/" or a partial name.
func checkPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	p := strings.TrimSuffix(prefix, "/")
	if p == "" {
		return fmt.Errorf("%w: prefix %q", ErrInvalidKey, prefix)
	}
	return CheckKey(p)
}
