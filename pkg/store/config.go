package store

import (
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/pflag"
)

// Config holds the S3 connection settings and retry policy. Empty fields fall back to the
// environment (see FromEnv); the directory backend uses only the retry-free parts.
type Config struct {
	// Endpoint is host:port or a URL ("http://127.0.0.1:9000"); a URL's scheme decides TLS.
	Endpoint string
	// Region of the bucket; empty lets the client discover it.
	Region string
	// AccessKey, SecretKey and SessionToken are static credentials.
	AccessKey, SecretKey, SessionToken string
	// Insecure disables TLS (plain HTTP) when Endpoint has no scheme.
	Insecure bool
	// SkipVerify accepts any TLS certificate (self-signed test servers only).
	SkipVerify bool
	// Retries is how many times a transient failure is retried (default 5).
	Retries int
	// RetryBase is the first backoff delay, doubled per retry (default 250ms, capped at 8s).
	RetryBase time.Duration
	// PartSize is the multipart part size in bytes (default 16 MiB).
	PartSize uint64
	// Logger receives retry warnings; nil discards them.
	Logger hclog.Logger
}

// BindFlags registers the S3 flags on fs and stores their values in c.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Endpoint, "s3-endpoint", "", "S3 endpoint, host:port or URL (default $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL or $MINIO_ENDPOINT)")
	fs.StringVar(&c.Region, "s3-region", "", "S3 region (default $AWS_REGION or $AWS_DEFAULT_REGION)")
	fs.StringVar(&c.AccessKey, "s3-access-key", "", "S3 access key (default $AWS_ACCESS_KEY_ID or $MINIO_ROOT_USER)")
	fs.StringVar(&c.SecretKey, "s3-secret-key", "", "S3 secret key (default $AWS_SECRET_ACCESS_KEY or $MINIO_ROOT_PASSWORD)")
	fs.BoolVar(&c.Insecure, "s3-insecure", false, "use plain HTTP when the endpoint has no scheme")
	fs.BoolVar(&c.SkipVerify, "s3-skip-verify", false, "accept any TLS certificate (test servers only)")
}

// FromEnv fills empty fields from the usual variables: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL,
// MINIO_ENDPOINT; AWS_REGION, AWS_DEFAULT_REGION, MINIO_REGION; AWS_ACCESS_KEY_ID,
// MINIO_ACCESS_KEY, MINIO_ROOT_USER; AWS_SECRET_ACCESS_KEY, MINIO_SECRET_KEY,
// MINIO_ROOT_PASSWORD; AWS_SESSION_TOKEN.
func (c Config) FromEnv() Config {
	first := func(cur string, names ...string) string {
		if cur != "" {
			return cur
		}
		for _, n := range names {
			if v := os.Getenv(n); v != "" {
				return v
			}
		}
		return ""
	}
	c.Endpoint = first(c.Endpoint, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MINIO_ENDPOINT")
	c.Region = first(c.Region, "AWS_REGION", "AWS_DEFAULT_REGION", "MINIO_REGION")
	c.AccessKey = first(c.AccessKey, "AWS_ACCESS_KEY_ID", "MINIO_ACCESS_KEY", "MINIO_ROOT_USER")
	c.SecretKey = first(c.SecretKey, "AWS_SECRET_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_ROOT_PASSWORD")
	c.SessionToken = first(c.SessionToken, "AWS_SESSION_TOKEN")
	return c
}

func (c Config) withDefaults() Config {
	if c.Retries == 0 {
		c.Retries = 5
	}
	if c.RetryBase == 0 {
		c.RetryBase = 250 * time.Millisecond
	}
	if c.PartSize == 0 {
		c.PartSize = 16 << 20
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	return c
}
