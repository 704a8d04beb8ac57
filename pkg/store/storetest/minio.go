// Package storetest holds what the store tests share: a helper that runs a real MinIO server
// on loopback, and the conformance suite every Store backend must pass.
package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/gantry-ml/gantry/pkg/store"
)

// MinIO is a MinIO server process started for one test, listening on 127.0.0.1 with
// generated credentials and a temporary data directory.
type MinIO struct {
	Endpoint  string // http://127.0.0.1:port
	AccessKey string
	SecretKey string
	Dir       string // data directory

	bin     string
	addr    string
	console string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
}

// FindMinIO returns the path of the MinIO server binary: $GANTRY_MINIO, then .cache/bin/minio
// in the module root (where hack/install-minio.sh puts it), then minio on $PATH.
func FindMinIO() (string, error) {
	if p := os.Getenv("GANTRY_MINIO"); p != "" {
		return p, nil
	}
	if root, err := ModuleRoot(); err == nil {
		p := filepath.Join(root, ".cache", "bin", "minio")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	if p, err := exec.LookPath("minio"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("storetest: minio server binary not found in $GANTRY_MINIO, .cache/bin or $PATH; run `make minio` (hack/install-minio.sh)")
}

// ModuleRoot returns the directory holding go.mod, searching up from the working directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("storetest: no go.mod above the working directory")
		}
		dir = parent
	}
}

// StartMinIO starts a MinIO server for the test and stops it in t.Cleanup. It skips the test
// when the minio binary is absent.
func StartMinIO(t testing.TB) *MinIO {
	t.Helper()
	bin, err := FindMinIO()
	if err != nil {
		t.Skip(err.Error())
	}
	m := &MinIO{
		AccessKey: "gantry-" + randHex(6),
		SecretKey: randHex(20),
		Dir:       t.TempDir(),
		bin:       bin,
		addr:      freeAddr(t),
		console:   freeAddr(t),
	}
	m.Endpoint = "http://" + m.addr
	m.logPath = filepath.Join(t.TempDir(), "minio.log")
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop() })
	return m
}

// Start (re)starts the server on the same address and data directory and waits until it
// answers its health check.
func (m *MinIO) Start() error {
	if m.cmd != nil {
		return fmt.Errorf("storetest: minio already running")
	}
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(m.bin, "server", "--quiet", "--address", m.addr, "--console-address", m.console, m.Dir)
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+m.AccessKey, "MINIO_ROOT_PASSWORD="+m.SecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=1")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("storetest: start minio: %w", err)
	}
	m.cmd, m.done = cmd, make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(m.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-m.done:
			m.cmd = nil
			return fmt.Errorf("storetest: minio exited at start-up: %s", m.logTail())
		default:
		}
		resp, err := http.Get(m.Endpoint + "/minio/health/live")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	m.Stop()
	return fmt.Errorf("storetest: minio not healthy after 60s: %s", m.logTail())
}

// Stop kills the server (SIGKILL, as a crash would) and waits for it to exit. It is
// idempotent.
func (m *MinIO) Stop() {
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Kill()
	<-m.done
	m.cmd = nil
}

func (m *MinIO) logTail() string {
	b, _ := os.ReadFile(m.logPath)
	s := strings.TrimSpace(string(b))
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return s
}

// Config returns store settings that reach this server, with short retry delays.
func (m *MinIO) Config() store.Config {
	return store.Config{
		Endpoint:  m.Endpoint,
		AccessKey: m.AccessKey,
		SecretKey: m.SecretKey,
		Region:    "us-east-1",
		RetryBase: 100 * time.Millisecond,
	}
}

// Client returns a minio-go client for direct inspection in tests.
func (m *MinIO) Client(t testing.TB) *minio.Client {
	t.Helper()
	cl, err := minio.New(m.addr, &minio.Options{Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, ""), Region: "us-east-1"})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// Bucket creates a bucket with a fresh name and returns its s3:// URI.
func (m *MinIO) Bucket(t testing.TB) string {
	t.Helper()
	name := "test-" + randHex(6)
	if err := m.Client(t).MakeBucket(context.Background(), name, minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
		t.Fatalf("make bucket %s: %v", name, err)
	}
	return "s3://" + name
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
