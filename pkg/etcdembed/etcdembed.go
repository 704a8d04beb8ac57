// Package etcdembed runs a single-member etcd server inside the current process: for the
// control-plane tests and for `coordinator dev`, where one machine plays the whole cluster and
// no etcd binary should be needed.
//
// Clients reach the server through a small TCP proxy on the advertised port (the front door).
// That lets Stop take the server away the way a crash or a lost route does (every client
// connection drops at once; etcd's own graceful stop would wait seconds for open watch
// streams) and lets Restart bring it back on the same port and data directory, so that the
// fault tests can pull etcd away under running clients. Data written before Stop survives:
// etcd syncs its write-ahead log before it acknowledges a write.
package etcdembed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"

	"github.com/gantry-ml/gantry/pkg/zaphclog"
)

// Options configures an embedded server. The zero value gives a quiet server on a free port
// of 127.0.0.1 with its data in a temporary directory removed by Close.
type Options struct {
	// Dir is the data directory; empty means a new temporary directory that Close removes.
	// A given directory is kept, and a server started on it again finds its data.
	Dir string
	// Name is the member name; empty means "gantry".
	Name string
	// Host is the loopback or local address to listen on; empty means 127.0.0.1.
	Host string
	// ClientPort is the port clients dial; 0 picks a free one.
	ClientPort int
	// StartTimeout bounds how long Start and Restart wait for the server to serve; 0 means
	// 30 seconds.
	StartTimeout time.Duration
	// TickMs and ElectionMs are raft's heartbeat and election timeout. 0 means 50 and 500:
	// a single member on one machine needs no more, and it lets leases as short as one
	// second be granted (etcd raises a lease's TTL to 1.5 election timeouts).
	TickMs, ElectionMs uint
	// Logger receives etcd's own log lines at LogLevel and above; nil discards them.
	Logger hclog.Logger
	// LogLevel is the least severe etcd line passed to Logger; NoLevel means Error.
	LogLevel hclog.Level
	// UnsafeNoFsync skips fsync (faster tests; a machine crash may lose data, a process
	// stop does not).
	UnsafeNoFsync bool
}

// Server is an embedded etcd server. Its methods may be called from several goroutines.
type Server struct {
	opts       Options
	dir        string
	removeDir  bool
	clientAddr string // etcd's own client listener, behind the front proxy
	peerURL    url.URL
	front      *Proxy

	mu sync.Mutex
	e  *embed.Etcd // nil while stopped
}

// ErrRunning and ErrStopped report a Restart of a running server and a proxy asked of a
// stopped one.
var (
	ErrRunning = errors.New("etcdembed: server is running")
	ErrStopped = errors.New("etcdembed: server is stopped")
)

// Start starts a server with opts and waits until it serves clients.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.ClientPort < 0 || opts.ClientPort > 65535 {
		return nil, fmt.Errorf("etcdembed: client port %d out of range", opts.ClientPort)
	}
	if opts.Name == "" {
		opts.Name = "gantry"
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 30 * time.Second
	}
	if opts.TickMs == 0 {
		opts.TickMs = 50
	}
	if opts.ElectionMs == 0 {
		opts.ElectionMs = 500
	}
	if opts.LogLevel == hclog.NoLevel {
		opts.LogLevel = hclog.Error
	}
	s := &Server{opts: opts, dir: opts.Dir}
	if s.dir == "" {
		d, err := os.MkdirTemp("", "gantry-etcd-*")
		if err != nil {
			return nil, fmt.Errorf("etcdembed: make data directory: %w", err)
		}
		s.dir, s.removeDir = d, true
	}
	front, err := listenProxy(net.JoinHostPort(opts.Host, strconv.Itoa(opts.ClientPort)), "")
	if err != nil {
		s.cleanup()
		return nil, err
	}
	s.front = front
	// etcd's own client and peer ports are picked free and bound a moment later by etcd;
	// another process can take one in between (seen under a parallel test suite), so a
	// bind failure picks new ones. Clients only ever see the front proxy's port.
	for attempt := 1; ; attempt++ {
		if err = s.pickPorts(); err == nil {
			if err = s.start(ctx); err == nil {
				break
			}
		}
		if attempt == 5 || !addrInUse(err) {
			front.Close()
			s.cleanup()
			return nil, err
		}
	}
	return s, nil
}

// addrInUse reports a listener that could not bind its port.
func addrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

// pickPorts chooses free ports for etcd's own client and peer listeners.
func (s *Server) pickPorts() error {
	cport, err := pickFree(s.opts.Host)
	if err != nil {
		return err
	}
	pport, err := pickFree(s.opts.Host)
	if err != nil {
		return err
	}
	s.clientAddr = net.JoinHostPort(s.opts.Host, strconv.Itoa(cport))
	s.peerURL = url.URL{Scheme: "http", Host: net.JoinHostPort(s.opts.Host, strconv.Itoa(pport))}
	s.front.retarget(s.clientAddr)
	return nil
}

// Endpoints are the addresses clients pass to clientv3.Config.Endpoints.
func (s *Server) Endpoints() []string { return []string{s.front.Endpoint()} }

// Endpoint is the single client address (http://host:port).
func (s *Server) Endpoint() string { return s.front.Endpoint() }

// Dir is the data directory.
func (s *Server) Dir() string { return s.dir }

// Running reports whether the server is started.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.e != nil
}

// Stop takes the server away: it drops every client connection at once, refuses new ones,
// and shuts etcd down keeping its data. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

func (s *Server) stopLocked() {
	if s.e == nil {
		return
	}
	s.front.Cut()
	s.e.Close()
	s.e = nil
}

// Restart starts a stopped server again on the same data directory and port.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	running := s.e != nil
	s.mu.Unlock()
	if running {
		return ErrRunning
	}
	return s.start(ctx)
}

// NewProxy opens another proxy to the server on a free port, for a client that a test
// wants to cut off alone. The caller closes it.
func (s *Server) NewProxy() (*Proxy, error) {
	return listenProxy(net.JoinHostPort(s.opts.Host, "0"), s.clientAddr)
}

// Close stops the server and removes its data directory if Start made it.
func (s *Server) Close() error {
	s.mu.Lock()
	s.stopLocked()
	s.mu.Unlock()
	err := s.front.Close()
	if rerr := s.cleanup(); err == nil {
		err = rerr
	}
	return err
}

func (s *Server) cleanup() error {
	if !s.removeDir {
		return nil
	}
	if err := os.RemoveAll(s.dir); err != nil {
		return fmt.Errorf("etcdembed: remove data directory: %w", err)
	}
	return nil
}

// start launches etcd on the server's directory and ports and waits until it serves.
func (s *Server) start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.e != nil {
		return ErrRunning
	}
	curl := url.URL{Scheme: "http", Host: s.clientAddr}
	cfg := embed.NewConfig()
	cfg.Name = s.opts.Name
	cfg.Dir = s.dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{curl}, []url.URL{s.front.url()}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{s.peerURL}, []url.URL{s.peerURL}
	cfg.InitialCluster = s.opts.Name + "=" + s.peerURL.String()
	cfg.TickMs, cfg.ElectionMs = s.opts.TickMs, s.opts.ElectionMs
	cfg.UnsafeNoFsync = s.opts.UnsafeNoFsync
	cfg.Logger = "zap"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zaphclog.New(s.opts.Logger, zapLevel(s.opts.LogLevel)))

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("etcdembed: start server in %s: %w", s.dir, err)
	}
	timer := time.NewTimer(s.opts.StartTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("etcdembed: server in %s failed while starting: %w", s.dir, err)
	case <-timer.C:
		e.Close()
		return fmt.Errorf("etcdembed: server in %s not ready after %s", s.dir, s.opts.StartTimeout)
	case <-ctx.Done():
		e.Close()
		return fmt.Errorf("etcdembed: start server: %w", ctx.Err())
	}
	s.e = e
	s.front.Restore()
	return nil
}

func (p *Proxy) url() url.URL { return url.URL{Scheme: "http", Host: p.Addr()} }

func zapLevel(l hclog.Level) zapcore.Level {
	switch {
	case l <= hclog.Debug:
		return zapcore.DebugLevel
	case l == hclog.Info:
		return zapcore.InfoLevel
	case l == hclog.Warn:
		return zapcore.WarnLevel
	default:
		return zapcore.ErrorLevel
	}
}

// pickFree is freePort; tests replace it to hand out a port already taken.
var pickFree = freePort

// freePort asks the kernel for a free TCP port on host.
func freePort(host string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("etcdembed: find a free port on %s: %w", host, err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
