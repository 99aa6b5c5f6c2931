// Package e2e tests prune-guard end to end: the real binary, as the
// authorization plugin of a real, private dockerd or as the proxy in front of
// one (proxy_test.go, proxy_buildkit_test.go), driven by the real docker CLI
// and by raw HTTP. Each test asserts on the engine's state afterwards
// (which images, containers, volumes still exist), not only on exit codes.
//
// The tests need Linux, root, dockerd, containerd, runc, the docker CLI and
// a static busybox. Without them they skip, except under CI=true, where they
// fail. They run on each engine of the matrix (PG_ENGINE, see
// internal/enginetest and scripts/engines.sh); where the engines differ, the
// expectation follows the engine's /version and /info. Run them as root
// from the repository root:
//
//	PG_ENGINE=28.5-containerd go test ./e2e/ -count=1 -v
package e2e

import (
	"os"
	"testing"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

func TestMain(m *testing.M) { os.Exit(enginetest.Main(m)) }
