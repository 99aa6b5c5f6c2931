package main

import (
	"strings"
	"testing"

	"github.com/prune-guard/prune-guard/guard"
)

func TestEngineWarnings(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    engineVersion
		want []string // substrings, one per warning, in order
	}{
		{"20.10 has nothing to warn about", engineVersion{"20.10.24", "1.41", "1.12"}, nil},
		{"26.1 has nothing to warn about", engineVersion{"26.1.5", "1.45", "1.24"}, nil},
		{"28.5 has nothing to warn about", engineVersion{"28.5.2", "1.51", "1.24"}, nil},
		{"29.1 refuses old API versions after the plugin decided", engineVersion{"29.1.3", "1.52", "1.44"}, []string{"refuses API versions below 1.44"}},
		{"29.2.0 also answers gRPC past the plugin", engineVersion{"29.2.0", "1.53", "1.44"}, []string{"answers gRPC on its API socket", "below 1.44"}},
		{"29.3 answers gRPC and accepts 1.40 again", engineVersion{"29.3.0", "1.54", "1.40"}, []string{"answers gRPC"}},
		{"29.5 also breaks BuildKit builds with the context in the body", engineVersion{"29.5.0", "1.54", "1.40"}, []string{"answers gRPC", "withBuildkit()"}},
		{"moby v2 module builds count by API version", engineVersion{"2.0.0-beta.24", "1.56", "1.40"}, []string{"answers gRPC", "request body"}},
		{"versions compare numerically per component", engineVersion{"x", "1.053", "1.040"}, []string{"answers gRPC"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := engineWarnings(tc.v, guard.ModeAuthz)
			if len(got) != len(tc.want) {
				t.Fatalf("engineWarnings(%+v) = %q; want %d warnings", tc.v, got, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("warning %d = %q; want it to mention %q", i, got[i], w)
				}
			}
		})
	}
}

// In proxy mode neither gRPC nor builds are a reason to warn: the proxy
// sees gRPC and gives builds full duplex. Old API versions still are.
func TestProxyModeWarnsOnlyAboutOldAPIVersions(t *testing.T) {
	for v, want := range map[engineVersion]int{
		{"20.10.24", "1.41", "1.12"}:      0,
		{"2.0.0-beta.24", "1.56", "1.40"}: 0,
		{"29.1.3", "1.52", "1.44"}:        1,
	} {
		if got := engineWarnings(v, guard.ModeProxy); len(got) != want {
			t.Errorf("engineWarnings(%+v, proxy) = %q; want %d warnings", v, got, want)
		}
	}
}
