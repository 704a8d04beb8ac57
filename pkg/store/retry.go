package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
)

// errNotRetryable marks a failure the retry loop must not repeat (a reader that cannot rewind).
var errNotRetryable = errors.New("the upload cannot be retried")

// transient reports whether err is worth retrying: network failures and S3 answers that mean
// "try again later".
func transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, errNotRetryable) {
		return false
	}
	var resp minio.ErrorResponse
	if errors.As(err, &resp) && resp.Code != "" {
		switch resp.Code {
		case "SlowDown", "SlowDownRead", "SlowDownWrite", "RequestTimeout", "InternalError",
			"ServiceUnavailable", "XMinioServerNotInitialized", "XMinioStorageFull",
			"OperationTimedOut", "RequestTimeTooSkewed", "XMinioReadQuorum", "XMinioWriteQuorum":
			return true
		}
		return resp.StatusCode >= 500
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe)
}

// retry runs op until it succeeds, fails permanently, runs out of attempts or ctx ends.
func (c Config) retry(ctx context.Context, what string, op func() error) error {
	delay := c.RetryBase
	for attempt := 0; ; attempt++ {
		err := op()
		if err == nil || !transient(err) || attempt >= c.Retries {
			if err != nil && attempt > 0 {
				return fmt.Errorf("%w (after %d attempts)", err, attempt+1)
			}
			return err
		}
		c.Logger.Warn("retrying after transient error", "op", what, "attempt", attempt+1, "delay", delay, "error", err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("store: %s: %w (last error: %v)", what, ctx.Err(), err)
		case <-t.C:
		}
		delay *= 2
		if delay > 8*time.Second {
			delay = 8 * time.Second
		}
	}
}
