// Package natsembed runs a NATS server inside the current process: for tests, for the
// all-reduce benchmark and for `coordinator dev`, where a single machine plays the whole
// cluster and no separate nats-server binary should be needed.
package natsembed

import (
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options configures an embedded server. The zero value listens on a random free port of
// 127.0.0.1 with the server's defaults (1 MiB max_payload, 64 MiB max_pending).
type Options struct {
	// Host to listen on; empty means 127.0.0.1.
	Host string
	// Port to listen on; 0 picks a free port.
	Port int
	// MaxPayload is the largest message payload the server accepts, in bytes; 0 keeps the
	// server's default (1 MiB).
	MaxPayload int32
	// MaxPending is how many bytes the server buffers for one slow client before it
	// disconnects it; 0 keeps the server's default (64 MiB).
	MaxPending int64
	// WriteDeadline bounds how long the server blocks writing to one client before it
	// declares it a slow consumer; 0 keeps the server's default.
	WriteDeadline time.Duration
	// StartTimeout bounds how long Start waits for the server to accept connections; 0
	// means 10 seconds.
	StartTimeout time.Duration
}

// Server is a running embedded NATS server.
type Server struct {
	srv *server.Server
}

// Start starts a server with opts and waits until it accepts connections.
func Start(opts Options) (*Server, error) {
	so := &server.Options{
		Host:          opts.Host,
		Port:          opts.Port,
		MaxPayload:    opts.MaxPayload,
		MaxPending:    opts.MaxPending,
		WriteDeadline: opts.WriteDeadline,
		NoLog:         true,
		NoSigs:        true,
	}
	if so.Host == "" {
		so.Host = "127.0.0.1"
	}
	if so.Port == 0 {
		so.Port = server.RANDOM_PORT
	}
	if opts.MaxPayload < 0 || opts.MaxPending < 0 || opts.Port < 0 {
		return nil, fmt.Errorf("natsembed: negative port, max_payload or max_pending")
	}
	srv, err := server.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("natsembed: configure server: %w", err)
	}
	go srv.Start()
	wait := opts.StartTimeout
	if wait == 0 {
		wait = 10 * time.Second
	}
	if !srv.ReadyForConnections(wait) {
		srv.Shutdown()
		return nil, fmt.Errorf("natsembed: server on %s:%d not ready after %s", so.Host, opts.Port, wait)
	}
	return &Server{srv: srv}, nil
}

// URL is the nats:// address clients connect to.
func (s *Server) URL() string { return s.srv.ClientURL() }

// Shutdown stops the server and waits until it has stopped.
func (s *Server) Shutdown() {
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
}
