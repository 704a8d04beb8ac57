package main

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// TestStatusUnreachableEtcd checks that status against an etcd that does not answer gives up
// within --timeout with one line naming the endpoint, and that a non-positive --timeout is
// refused before dialling.
func TestStatusUnreachableEtcd(t *testing.T) {
	// A port that was just free: nothing listens there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	run := func(args ...string) error {
		cmd := newStatusCmd()
		cmd.SetArgs(args)
		return cmd.ExecuteContext(context.Background())
	}
	start := time.Now()
	err = run("--etcd", addr, "--job", "j", "--timeout", "300ms")
	if err == nil {
		t.Fatal("status against a closed port succeeded")
	}
	if el := time.Since(start); el > 20*time.Second {
		t.Errorf("status took %s with --timeout 300ms", el)
	}
	msg := err.Error()
	if !strings.Contains(msg, "no answer from etcd at "+addr) || strings.Contains(msg, "\n") {
		t.Errorf("error %q: want one line naming %s", msg, addr)
	}
	for _, bad := range []string{"0s", "-1s"} {
		err := run("--etcd", addr, "--job", "j", "--timeout", bad)
		if err == nil || !strings.Contains(err.Error(), "--timeout") {
			t.Errorf("--timeout %s: got %v, want an error naming --timeout", bad, err)
		}
	}
}
