package main

import (
	"os/exec"
	"syscall"
)

// stopWithParent has the kernel send the worker SIGTERM when the coordinator dies.
func stopWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
