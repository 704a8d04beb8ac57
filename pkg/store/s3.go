package store

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// s3Store keeps objects under prefix in one bucket.
type s3Store struct {
	cl     *minio.Client
	bucket string
	prefix string // "" or ends with "/"
	cfg    Config
}

func openS3(ctx context.Context, uri string, cfg Config) (*s3Store, error) {
	cfg = cfg.FromEnv().withDefaults()
	rest := strings.TrimPrefix(uri, "s3://")
	bucket, prefix, _ := strings.Cut(rest, "/")
	if bucket == "" {
		return nil, fmt.Errorf("store: %q: missing bucket; use s3://bucket/prefix", uri)
	}
	prefix = strings.Trim(prefix, "/")
	if prefix != "" {
		if err := CheckKey(prefix); err != nil {
			return nil, fmt.Errorf("store: %q: bad prefix: %w", uri, err)
		}
		prefix += "/"
	}
	if cfg.Endpoint == "" {
		return nil, fmt.Errorf("store: %q: no S3 endpoint; set --s3-endpoint or AWS_ENDPOINT_URL", uri)
	}
	host, secure := cfg.Endpoint, !cfg.Insecure
	if strings.Contains(host, "://") {
		u, err := url.Parse(host)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || strings.Trim(u.Path, "/") != "" || u.RawQuery != "" {
			return nil, fmt.Errorf("store: bad S3 endpoint %q: want host:port or http(s)://host:port (no path)", cfg.Endpoint)
		}
		host, secure = u.Host, u.Scheme == "https"
	}
	tr, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, fmt.Errorf("store: S3 transport: %w", err)
	}
	if cfg.SkipVerify && secure {
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // opt-in for test servers
	}
	var creds *credentials.Credentials
	if cfg.AccessKey != "" || cfg.SecretKey != "" {
		creds = credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, cfg.SessionToken)
	} else {
		// Anonymous access, or IAM role credentials where the platform provides them.
		creds = credentials.NewChainCredentials([]credentials.Provider{&credentials.EnvAWS{}, &credentials.IAM{}})
	}
	cl, err := minio.New(host, &minio.Options{
		Creds:     creds,
		Secure:    secure,
		Region:    cfg.Region,
		Transport: tr,
		// Our own loop retries whole operations; keep the client's retries short so that a
		// server outage surfaces here, where readers can be rewound.
		MaxRetries: 2,
	})
	if err != nil {
		return nil, fmt.Errorf("store: S3 client for %s: %w", cfg.Endpoint, err)
	}
	s := &s3Store{cl: cl, bucket: bucket, prefix: prefix, cfg: cfg}
	var exists bool
	err = cfg.retry(ctx, "bucket check", func() error {
		var e error
		exists, e = cl.BucketExists(ctx, bucket)
		return e
	})
	if err != nil {
		return nil, fmt.Errorf("store: reach bucket %s at %s: %w", bucket, cfg.Endpoint, err)
	}
	if !exists {
		return nil, fmt.Errorf("store: bucket %q does not exist at %s; create it first", bucket, cfg.Endpoint)
	}
	return s, nil
}

func (s *s3Store) URI() string {
	if s.prefix == "" {
		return "s3://" + s.bucket
	}
	return "s3://" + s.bucket + "/" + strings.TrimSuffix(s.prefix, "/")
}

func (s *s3Store) object(key string) (string, error) {
	if err := CheckKey(key); err != nil {
		return "", err
	}
	return s.prefix + key, nil
}

func (s *s3Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.put(ctx, key, r, size, false)
}

func (s *s3Store) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.put(ctx, key, r, size, true)
}

func (s *s3Store) put(ctx context.Context, key string, r io.Reader, size int64, createOnly bool) error {
	obj, err := s.object(key)
	if err != nil {
		return err
	}
	start := int64(0)
	if sk, ok := r.(io.Seeker); ok {
		if start, err = sk.Seek(0, io.SeekCurrent); err != nil {
			r = struct{ io.Reader }{r} // not really seekable; retries become impossible
		}
	}
	attempt := 0
	var lastErr error
	err = s.cfg.retry(ctx, "put "+key, func() error {
		if attempt > 0 {
			sk, ok := r.(io.Seeker)
			if !ok {
				return fmt.Errorf("store: put %s: %v; %w: its reader cannot seek back to the start", key, lastErr, errNotRetryable)
			}
			if _, err := sk.Seek(start, io.SeekStart); err != nil {
				return fmt.Errorf("store: put %s: %v; %w: rewind failed: %v", key, lastErr, errNotRetryable, err)
			}
		}
		attempt++
		// minio-go adds a CRC32C checksum to every request by default, which the server
		// verifies. Setting AutoChecksum explicitly breaks unknown-size uploads (minio-go
		// v7.4.1 sends a whole-object header on each part), so it is left at its default.
		opts := minio.PutObjectOptions{
			PartSize:    s.cfg.PartSize,
			ContentType: "application/octet-stream",
		}
		if createOnly {
			opts.SetMatchETagExcept("*")
		}
		src := &sourceReader{ctx: ctx, r: r}
		_, err := s.cl.PutObject(ctx, s.bucket, obj, src, size, opts)
		if err != nil && createOnly && isPreconditionFailed(err) {
			if attempt > 1 {
				// An earlier attempt may have committed before its answer was lost.
				return fmt.Errorf("store: put %s: %w (possibly by an earlier attempt of this call)", key, ErrExists)
			}
			return fmt.Errorf("store: put %s: %w", key, ErrExists)
		}
		if err != nil {
			// Failures of the caller's reader are not the server's: never retry them.
			if src.err != nil {
				return fmt.Errorf("store: put %s: reading the data failed: %w", key, src.err)
			}
			if src.eof && size >= 0 && src.n < size {
				return fmt.Errorf("store: put %s: the data ended after %d of %d bytes", key, src.n, size)
			}
		}
		lastErr = err
		return err
	})
	if err != nil {
		if errors.Is(err, ErrExists) || errors.Is(err, errNotRetryable) {
			return err
		}
		return fmt.Errorf("store: put %s to %s: %w", key, s.URI(), err)
	}
	return nil
}

// s3Error finds the server's answer in err, also when retry wrapped it.
func s3Error(err error) minio.ErrorResponse {
	var resp minio.ErrorResponse
	if errors.As(err, &resp) {
		return resp
	}
	return minio.ToErrorResponse(err)
}

func isPreconditionFailed(err error) bool {
	resp := s3Error(err)
	return resp.StatusCode == http.StatusPreconditionFailed || resp.Code == "PreconditionFailed"
}

func isNotFound(err error) bool {
	resp := s3Error(err)
	return resp.StatusCode == http.StatusNotFound || resp.Code == "NoSuchKey"
}

func (s *s3Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	obj, err := s.object(key)
	if err != nil {
		return nil, err
	}
	var o *minio.Object
	err = s.cfg.retry(ctx, "get "+key, func() error {
		var e error
		o, e = s.cl.GetObject(ctx, s.bucket, obj, minio.GetObjectOptions{})
		if e != nil {
			return e
		}
		// GetObject is lazy; Stat makes the request so that a missing object fails here.
		if _, e = o.Stat(); e != nil {
			o.Close()
		}
		return e
	})
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("store: get %s: %w", key, ErrNotFound)
		}
		return nil, fmt.Errorf("store: get %s from %s: %w", key, s.URI(), err)
	}
	return o, nil
}

func (s *s3Store) Stat(ctx context.Context, key string) (Info, error) {
	obj, err := s.object(key)
	if err != nil {
		return Info{}, err
	}
	var oi minio.ObjectInfo
	err = s.cfg.retry(ctx, "stat "+key, func() error {
		var e error
		oi, e = s.cl.StatObject(ctx, s.bucket, obj, minio.StatObjectOptions{})
		return e
	})
	if err != nil {
		if isNotFound(err) {
			return Info{}, fmt.Errorf("store: stat %s: %w", key, ErrNotFound)
		}
		return Info{}, fmt.Errorf("store: stat %s in %s: %w", key, s.URI(), err)
	}
	return Info{Key: key, Size: oi.Size, ModTime: oi.LastModified, ETag: oi.ETag}, nil
}

func (s *s3Store) List(ctx context.Context, prefix string) ([]Info, error) {
	if err := checkPrefix(prefix); err != nil {
		return nil, err
	}
	var out []Info
	err := s.cfg.retry(ctx, "list "+prefix, func() error {
		out = out[:0]
		for oi := range s.cl.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true}) {
			if oi.Err != nil {
				return oi.Err
			}
			out = append(out, Info{Key: strings.TrimPrefix(oi.Key, s.prefix), Size: oi.Size, ModTime: oi.LastModified, ETag: oi.ETag})
		}
		return ctx.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("store: list %q in %s: %w", prefix, s.URI(), err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

func (s *s3Store) Delete(ctx context.Context, key string) error {
	obj, err := s.object(key)
	if err != nil {
		return err
	}
	err = s.cfg.retry(ctx, "delete "+key, func() error {
		return s.cl.RemoveObject(ctx, s.bucket, obj, minio.RemoveObjectOptions{})
	})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("store: delete %s in %s: %w", key, s.URI(), err)
	}
	return nil
}

func (s *s3Store) Cleanup(ctx context.Context, prefix string, olderThan time.Duration) (int, error) {
	if err := checkPrefix(prefix); err != nil {
		return 0, err
	}
	cutoff := time.Now().Add(-olderThan)
	n := 0
	for up := range s.cl.ListIncompleteUploads(ctx, s.bucket, s.prefix+prefix, true) {
		if up.Err != nil {
			return n, fmt.Errorf("store: list incomplete uploads under %q in %s: %w", prefix, s.URI(), up.Err)
		}
		if up.Initiated.After(cutoff) {
			continue
		}
		if err := s.cl.RemoveIncompleteUpload(ctx, s.bucket, up.Key); err != nil {
			return n, fmt.Errorf("store: abort upload of %s: %w", up.Key, err)
		}
		n++
	}
	return n, nil
}

// sourceReader watches the caller's reader so that its failures are told apart from the
// server's, and stops reading when ctx ends (minio-go fills whole parts before sending).
type sourceReader struct {
	ctx context.Context
	r   io.Reader
	n   int64
	eof bool
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		s.err = err
		return 0, err
	}
	n, err := s.r.Read(p)
	s.n += int64(n)
	if err == io.EOF {
		s.eof = true
	} else if err != nil {
		s.err = err
	}
	return n, err
}
