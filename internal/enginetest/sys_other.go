//go:build !linux

package enginetest

import "syscall"

// Engines run only on Linux (requireEngine skips or fails elsewhere); these
// keep the package compiling on other systems.

func killLeftovers(root string, containerIDs []string) []string { return nil }

func unmountUnder(root string) []error { return nil }

func deathSignal(sig syscall.Signal) *syscall.SysProcAttr { return nil }
