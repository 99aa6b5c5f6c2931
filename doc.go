// Package pruneguard is the module of prune-guard, a guard in front of the
// Docker Engine that keeps a CI host's warm image cache alive. It holds no
// code: the command is cmd/prune-guard (go install
// github.com/prune-guard/prune-guard/cmd/prune-guard@latest), and README.md
// says what each package is for.
package pruneguard
