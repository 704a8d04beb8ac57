package store

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOpenExistingCreatesNothing checks that the readers' Open refuses a missing directory or a
// file with one line naming it and leaves nothing behind, and opens an existing directory.
func TestOpenExistingCreatesNothing(t *testing.T) {
	ctx := context.Background()
	base := t.TempDir()
	missing := filepath.Join(base, "no", "such")
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ uri, want string }{
		{missing, "no such directory"},
		{"file://" + missing, "no such directory"},
		{file, "is a file, not a directory"},
	} {
		_, err := OpenExisting(ctx, c.uri, Config{})
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.uri) {
			t.Errorf("OpenExisting(%s) = %v; want an error naming it with %q", c.uri, err, c.want)
		}
	}
	if _, err := os.Stat(filepath.Join(base, "no")); !os.IsNotExist(err) {
		t.Errorf("OpenExisting created %s (stat: %v)", filepath.Join(base, "no"), err)
	}
	st, err := OpenExisting(ctx, "file://"+base, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if st.URI() != "file://"+base {
		t.Errorf("URI %s, want file://%s", st.URI(), base)
	}
	if _, err := OpenExisting(ctx, "s3://", Config{}); err == nil {
		t.Error("OpenExisting(s3://) succeeded")
	}
}

// TestS3EndpointRefused checks endpoints that used to be taken with a part silently dropped
// (another scheme read as http, a path ignored): refused before any request.
func TestS3EndpointRefused(t *testing.T) {
	for _, ep := range []string{"ftp://127.0.0.1:9000", "http://127.0.0.1:9000/some/path", "http://127.0.0.1:9000?x=1", "http://"} {
		_, err := Open(context.Background(), "s3://bucket/p", Config{Endpoint: ep, Retries: 1})
		if err == nil || !strings.Contains(err.Error(), "bad S3 endpoint") || !strings.Contains(err.Error(), ep) {
			t.Errorf("endpoint %q: %v; want a bad S3 endpoint error naming it", ep, err)
		}
	}
}
