//go:build !linux

package main

import "os/exec"

// stopWithParent does nothing where the kernel has no parent-death signal: a worker whose
// coordinator was killed outright has to be stopped by hand.
func stopWithParent(*exec.Cmd) {}
