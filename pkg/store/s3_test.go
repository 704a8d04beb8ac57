package store_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/gantry-ml/gantry/pkg/store"
	"github.com/gantry-ml/gantry/pkg/store/storetest"
)

// triggerReader runs fire once after at bytes have been read. It can seek (so a retried
// upload can rewind) but deliberately has no ReadAt, so minio-go reads it in order.
type triggerReader struct {
	r    *bytes.Reader
	at   int64
	fire func()
	once sync.Once
	read int64
}

func (t *triggerReader) Read(p []byte) (int, error) {
	if t.read >= t.at {
		t.once.Do(t.fire)
	}
	n, err := t.r.Read(p)
	t.read += int64(n)
	return n, err
}

func (t *triggerReader) Seek(off int64, whence int) (int64, error) {
	n, err := t.r.Seek(off, whence)
	t.read = n
	return n, err
}

func incompleteUploads(t *testing.T, m *storetest.MinIO, bucket string) int {
	n := 0
	for up := range m.Client(t).ListIncompleteUploads(context.Background(), bucket, "", true) {
		if up.Err != nil {
			t.Fatal(up.Err)
		}
		n++
	}
	return n
}

// TestS3OutageMidUpload stops MinIO in the middle of a 64 MiB multipart upload.
func TestS3OutageMidUpload(t *testing.T) {
	if testing.Short() {
		t.Skip("64 MiB uploads with a server restart; skipped in -short")
	}
	ctx := context.Background()
	m := storetest.StartMinIO(t)
	uri := m.Bucket(t)
	bucket := strings.TrimPrefix(uri, "s3://")
	cfg := m.Config()
	cfg.Retries = 7
	cfg.PartSize = 8 << 20
	s, err := store.Open(ctx, uri, cfg)
	if err != nil {
		t.Fatal(err)
	}
	data := storetest.Bytes(64<<20, 11)

	t.Run("RetriedAfterRestart", func(t *testing.T) {
		var wg sync.WaitGroup
		r := &triggerReader{r: bytes.NewReader(data), at: 20 << 20, fire: func() {
			m.Stop()
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(time.Second)
				if err := m.Start(); err != nil {
					t.Errorf("restart minio: %v", err)
				}
			}()
		}}
		err := s.Put(ctx, "big", r, int64(len(data)))
		wg.Wait()
		if err != nil {
			t.Fatalf("put across a 1s outage with a seekable reader: %v", err)
		}
		got, err := store.ReadAll(ctx, s, "big")
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read back %d B, %v; want the 64 MiB written", len(got), err)
		}
	})

	t.Run("FailsClearlyWithoutRewind", func(t *testing.T) {
		r := &triggerReader{r: bytes.NewReader(data), at: 20 << 20, fire: m.Stop}
		// Hide Seek: the upload cannot restart from the beginning.
		err := s.Put(ctx, "big2", struct{ io.Reader }{r}, int64(len(data)))
		if err == nil {
			t.Fatal("put succeeded with the server down")
		}
		t.Logf("error: %v", err)
		if !strings.Contains(err.Error(), "big2") {
			t.Errorf("error does not name the object: %v", err)
		}
		if err := m.Start(); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Stat(ctx, "big2"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("after a failed put, stat = %v; want ErrNotFound (no partial object)", err)
		}
		// Whatever parts the killed upload left are removed by Cleanup.
		if _, err := s.Cleanup(ctx, "", 0); err != nil {
			t.Fatal(err)
		}
		if n := incompleteUploads(t, m, bucket); n != 0 {
			t.Fatalf("%d incomplete uploads left after cleanup", n)
		}
	})

	t.Run("CleanupAbortsStaleUploads", func(t *testing.T) {
		core := minio.Core{Client: m.Client(t)}
		if _, err := core.NewMultipartUpload(ctx, bucket, "stale", minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
		if n := incompleteUploads(t, m, bucket); n != 1 {
			t.Fatalf("%d incomplete uploads, want 1", n)
		}
		if n, err := s.Cleanup(ctx, "", time.Hour); err != nil || n != 0 {
			t.Fatalf("cleanup of uploads older than 1h removed %d, %v; want 0", n, err)
		}
		if n, err := s.Cleanup(ctx, "", 0); err != nil || n != 1 {
			t.Fatalf("cleanup removed %d, %v; want 1", n, err)
		}
	})
}

// TestS3ServerDown checks that a call against a stopped server fails within its retries
// with an error that names the endpoint.
func TestS3ServerDown(t *testing.T) {
	ctx := context.Background()
	m := storetest.StartMinIO(t)
	uri := m.Bucket(t)
	cfg := m.Config()
	cfg.Retries = 2
	s, err := store.Open(ctx, uri, cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.Stop()
	_, err = s.Stat(ctx, "x")
	if err == nil || errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), "after 3 attempts") {
		t.Fatalf("stat with the server down: %v", err)
	}
	t.Logf("error: %v", err)
	if _, err := store.Open(ctx, "s3://nobucket", store.Config{Endpoint: m.Endpoint, AccessKey: "a", SecretKey: "b", Retries: 1, RetryBase: time.Millisecond}); err == nil {
		t.Fatal("open against a stopped server succeeded")
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ uri, want string }{
		{"", "empty URI"},
		{"gs://bucket", "unsupported scheme"},
		{"file://relative", "absolute path"},
		{"s3://", "missing bucket"},
		{"s3://b/../x", "bad prefix"},
	} {
		cfg := store.Config{Endpoint: "127.0.0.1:1"}
		if _, err := store.Open(ctx, tc.uri, cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("open %q: %v, want %q", tc.uri, err, tc.want)
		}
	}
	t.Setenv("AWS_ENDPOINT_URL", "")
	t.Setenv("AWS_ENDPOINT_URL_S3", "")
	t.Setenv("MINIO_ENDPOINT", "")
	if _, err := store.Open(ctx, "s3://b", store.Config{}); err == nil || !strings.Contains(err.Error(), "no S3 endpoint") {
		t.Errorf("open without endpoint: %v", err)
	}
}

func TestConfigFromEnv(t *testing.T) {
	t.Setenv("AWS_ENDPOINT_URL", "http://e:1")
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("MINIO_ROOT_USER", "u")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "s")
	t.Setenv("AWS_REGION", "r")
	c := store.Config{Region: "flag"}.FromEnv()
	if c.Endpoint != "http://e:1" || c.AccessKey != "u" || c.SecretKey != "s" || c.Region != "flag" {
		t.Fatalf("from env: %+v", c)
	}
}
