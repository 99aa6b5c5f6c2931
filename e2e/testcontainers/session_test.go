// Package testcontainers drives testcontainers-go, the real client, against
// a private engine guarded by prune-guard. It is a module of its own so that
// testcontainers-go and its dependencies stay out of prune-guard's go.mod.
//
// It is run by the main module's e2e test
// TestTestcontainersGoSessionHoldsImageDeletesThroughItsTeardown, which
// starts the guarded engine and passes it in the environment:
//
//	PG_TC_DOCKER_HOST  the engine (also set as DOCKER_HOST)
//	PG_TC_IMAGE        a local image to start (never pulled)
//	PG_TC_VICTIM       another local image, whose delete must be refused
//	PG_TC_OUT          a file this test writes the session id to
//
// with TESTCONTAINERS_RYUK_DISABLED=true: the reaper's image cannot be
// pulled here. Run alone, without PG_TC_DOCKER_HOST, it skips.
package testcontainers

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"
	tc "github.com/testcontainers/testcontainers-go"
)

func TestSessionContainerCarriesItsSessionLabel(t *testing.T) {
	host := os.Getenv("PG_TC_DOCKER_HOST")
	if host == "" {
		// Under CI a test that quietly skips proves nothing.
		if os.Getenv("CI") == "true" {
			t.Fatal("PG_TC_DOCKER_HOST is not set: run through the main module's e2e test (TestTestcontainersGoSession…)")
		}
		t.Skip("PG_TC_DOCKER_HOST is not set: run through the main module's e2e test")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := tc.GenericContainer(ctx, tc.GenericContainerRequest{
		ContainerRequest: tc.ContainerRequest{
			Image: os.Getenv("PG_TC_IMAGE"),
			Cmd:   []string{"busybox", "sleep", "300"},
		},
		Started: true,
	})
	if err != nil {
		t.Fatalf("GenericContainer: %v", err)
	}
	insp, err := c.Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	session := insp.Config.Labels["org.testcontainers.sessionId"]
	t.Logf("container %s labels %v", insp.Name, insp.Config.Labels)
	if session == "" || session != tc.SessionID() {
		t.Fatalf("container's org.testcontainers.sessionId = %q, want the session's %q", session, tc.SessionID())
	}
	if err := os.WriteFile(os.Getenv("PG_TC_OUT"), []byte(session+"\n"+strings.TrimPrefix(insp.Name, "/")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// While the session's container lives, an image delete through the
	// same engine is refused, naming the session.
	dc, err := client.New(client.WithHost(host))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	_, err = dc.ImageRemove(ctx, os.Getenv("PG_TC_VICTIM"), client.ImageRemoveOptions{})
	if err == nil || !strings.Contains(err.Error(), "active Testcontainers session "+session) {
		t.Errorf("image delete while the session's container lives: %v; want a prune-guard denial naming Testcontainers session %s", err, session)
	}
	t.Logf("image delete while the container lives: %v", err)

	// The session ends as the reaper would end it: the container goes.
	if err := tc.TerminateContainer(c); err != nil {
		t.Fatalf("terminating the container: %v", err)
	}
	_, err = dc.ImageRemove(ctx, os.Getenv("PG_TC_VICTIM"), client.ImageRemoveOptions{})
	if err == nil || !strings.Contains(err.Error(), "in its teardown grace: Testcontainers session "+session) {
		t.Errorf("image delete right after the container went: %v; want a prune-guard denial naming the session in its teardown grace", err)
	}
	t.Logf("image delete right after the container went: %v", err)
}
