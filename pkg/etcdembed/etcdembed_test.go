package etcdembed

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func client(t *testing.T, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 2 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func get(ctx context.Context, cli *clientv3.Client, key string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	if err != nil {
		return "", err
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}

// eventually retries f until it succeeds or d passes.
func eventually(t *testing.T, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestStopRestartKeepsDataAndPort(t *testing.T) {
	ctx := context.Background()
	s, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir, ep := s.Dir(), s.Endpoint()
	cli := client(t, s.Endpoints())
	if _, err := cli.Put(ctx, "/k", "before"); err != nil {
		t.Fatal(err)
	}

	s.Stop()
	if s.Running() {
		t.Fatal("running after Stop")
	}
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = cli.Get(short, "/k")
	cancel()
	if err == nil {
		t.Fatal("read succeeded while the server was stopped")
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(ctx); err != ErrRunning {
		t.Fatalf("second Restart: got %v, want ErrRunning", err)
	}
	if s.Endpoint() != ep {
		t.Fatalf("endpoint moved from %s to %s", ep, s.Endpoint())
	}
	// The same client finds the server again on the same port.
	eventually(t, 10*time.Second, func() error {
		v, err := get(ctx, cli, "/k")
		if err == nil && v != "before" {
			t.Fatalf("after restart /k = %q, want %q", v, "before")
		}
		return err
	})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("temporary data directory %s left behind (%v)", dir, err)
	}
}

func TestGivenDirIsKept(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "etcd")
	s, err := Start(ctx, Options{Dir: dir, UnsafeNoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client(t, s.Endpoints()).Put(ctx, "/k", "v1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A new server (new ports) on the same directory finds the data.
	s2, err := Start(ctx, Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	v, err := get(ctx, client(t, s2.Endpoints()), "/k")
	if err != nil || v != "v1" {
		t.Fatalf("got %q, %v; want v1", v, err)
	}
}

func TestProxyCutIsolatesOneClient(t *testing.T) {
	ctx := context.Background()
	s, err := Start(ctx, Options{UnsafeNoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p, err := s.NewProxy()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	direct, viaProxy := client(t, s.Endpoints()), client(t, []string{p.Endpoint()})
	if _, err := viaProxy.Put(ctx, "/p", "1"); err != nil {
		t.Fatal(err)
	}
	p.Cut()
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = viaProxy.Get(short, "/p")
	cancel()
	if err == nil {
		t.Fatal("read through a cut proxy succeeded")
	}
	if v, err := get(ctx, direct, "/p"); err != nil || v != "1" {
		t.Fatalf("direct client: %q, %v", v, err)
	}
	p.Restore()
	eventually(t, 10*time.Second, func() error {
		_, err := get(ctx, viaProxy, "/p")
		return err
	})
}

func TestBadPort(t *testing.T) {
	if _, err := Start(context.Background(), Options{ClientPort: 70000}); err == nil {
		t.Fatal("port 70000 accepted")
	}
}

// TestStartPicksAnotherPortWhenTaken: etcd's own client port is picked free and bound a
// moment later; when another process takes it in between, Start picks new ports instead of
// failing, and the server answers on its endpoint.
func TestStartPicksAnotherPortWhenTaken(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	taken := held.Addr().(*net.TCPAddr).Port
	calls := 0
	pickFree = func(host string) (int, error) {
		calls++
		if calls == 1 {
			return taken, nil // the client port, already in use
		}
		return freePort(host)
	}
	defer func() { pickFree = freePort }()
	s, err := Start(context.Background(), Options{})
	if err != nil {
		t.Fatalf("Start with its first client port taken: %v", err)
	}
	defer s.Close()
	if calls < 4 {
		t.Errorf("ports picked %d times; want a second pair after the taken one", calls)
	}
	cli := client(t, s.Endpoints())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if v, err := get(ctx, cli, "k"); err != nil || v != "v" {
		t.Errorf("get k: %q %v", v, err)
	}
}
