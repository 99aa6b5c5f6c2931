// Package e2e tests prune-guard end to end: the real binary, as the
// authorization plugin of a real, private dockerd, driven by the real docker
// CLI and by raw HTTP. Each test asserts on the engine's state afterwards
// (which images, containers, volumes still exist), not only on exit codes.
//
// The tests need Linux, root, dockerd 20.10 (API 1.41), containerd, runc, the
// docker CLI and a static busybox. Without them they skip, except under
// CI=true, where they fail. Run them as root from the repository root:
//
//	go test ./e2e/ -count=1 -v
package e2e

import (
	"os"
	"testing"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

func TestMain(m *testing.M) { os.Exit(enginetest.Main(m)) }
