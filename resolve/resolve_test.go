package resolve

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/image"
	"github.com/moby/moby/api/types/plugin"
	"github.com/moby/moby/client"
)

// fakeEngine answers the resolver's three questions from memory and
// records what it was asked.
type fakeEngine struct {
	images    map[string]client.ImageInspectResult // by every name the engine resolves
	inspected []string

	list     []image.Summary
	listOpts []client.ImageListOptions

	plugins []plugin.Plugin

	err error // the answer to every question, when set
}

func (f *fakeEngine) ImageInspect(_ context.Context, name string, _ ...client.ImageInspectOption) (client.ImageInspectResult, error) {
	f.inspected = append(f.inspected, name)
	if f.err != nil {
		return client.ImageInspectResult{}, f.err
	}
	res, ok := f.images[name]
	if !ok {
		return client.ImageInspectResult{}, cerrdefs.ErrNotFound.WithMessage("Error response from daemon: No such image: " + name)
	}
	return res, nil
}

func (f *fakeEngine) ImageList(_ context.Context, opts client.ImageListOptions) (client.ImageListResult, error) {
	f.listOpts = append(f.listOpts, opts)
	if f.err != nil {
		return client.ImageListResult{}, f.err
	}
	return client.ImageListResult{Items: f.list}, nil
}

func (f *fakeEngine) PluginList(_ context.Context, _ client.PluginListOptions) (client.PluginListResult, error) {
	if f.err != nil {
		return client.PluginListResult{}, f.err
	}
	return client.PluginListResult{Items: f.plugins}, nil
}

var errEngine = errors.New("Cannot connect to the Docker daemon at unix:///var/run/docker.sock")

const (
	appID  = "sha256:8f1e6b2a3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7"
	digest = "sha256:ded212f7f37e4e67d7926125cfc0939e3fb8a411057ee2e224b16208d43bb74b"
)

// inspected is what the engine says of an image, as JSON decodes it (the
// config's type lives in a module prune-guard does not require directly).
func inspected(t *testing.T, js string) client.ImageInspectResult {
	t.Helper()
	var res client.ImageInspectResult
	if err := json.Unmarshal([]byte(js), &res.InspectResponse); err != nil {
		t.Fatal(err)
	}
	return res
}

func resolver(f *fakeEngine) *Resolver { return New(f, time.Second) }

func TestImageIsWhatTheEngineFindsUnderTheName(t *testing.T) {
	app := inspected(t, `{"Id": "`+appID+`", "RepoTags": ["app:1", "app:latest"], "RepoDigests": ["app@`+digest+`"],
		"Config": {"Labels": {"prune-guard.keep": "true"}}}`)
	bare := inspected(t, `{"Id": "sha256:0123", "RepoTags": [], "RepoDigests": []}`)
	f := &fakeEngine{images: map[string]client.ImageInspectResult{
		"app:1": app, appID: app, "8f1e6b2a3c4d": app, "app@" + digest: app, "sha256:0123": bare,
	}}
	wantApp := Image{ID: appID, Refs: []string{"app:1", "app:latest", "app@" + digest}, Labels: map[string]string{"prune-guard.keep": "true"}}
	for _, tc := range []struct {
		name  string
		want  Image
		found bool
	}{
		{name: "app:1", want: wantApp, found: true},
		{name: appID, want: wantApp, found: true},
		{name: "8f1e6b2a3c4d", want: wantApp, found: true},
		{name: "app@" + digest, want: wantApp, found: true},
		{name: "sha256:0123", want: Image{ID: "sha256:0123"}, found: true},
		{name: "app:2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, found, err := resolver(f).Image(context.Background(), tc.name)
			if err != nil || found != tc.found {
				t.Fatalf("Image(%q) found %v, err %v; want found %v, no error", tc.name, found, err, tc.found)
			}
			if got.ID != tc.want.ID || !slices.Equal(got.Refs, tc.want.Refs) || len(got.Labels) != len(tc.want.Labels) ||
				got.Labels["prune-guard.keep"] != tc.want.Labels["prune-guard.keep"] {
				t.Errorf("Image(%q) = %+v, want %+v", tc.name, got, tc.want)
			}
		})
	}
}

func TestImageEngineErrorIsAnErrorNotAbsence(t *testing.T) {
	f := &fakeEngine{err: errEngine}
	_, found, err := resolver(f).Image(context.Background(), "app:1")
	if found || !errors.Is(err, errEngine) || !strings.HasPrefix(err.Error(), `inspect image "app:1": `) {
		t.Errorf("found %v, err %v; want not found and the engine's error, naming the image", found, err)
	}
}

func TestImagesAsksForTheScopeAndDanglingFilterThePruneCarries(t *testing.T) {
	for _, tc := range []struct {
		name         string
		scope        []string
		danglingOnly bool
		want         client.Filters
	}{
		{name: "every image", want: client.Filters{}},
		{name: "a label scope", scope: []string{"ci=1", "team"}, want: client.Filters{"label": {"ci=1": true, "team": true}}},
		{name: "dangling only", danglingOnly: true, want: client.Filters{"dangling": {"true": true}}},
		{name: "both", scope: []string{"ci=1"}, danglingOnly: true, want: client.Filters{"label": {"ci=1": true}, "dangling": {"true": true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeEngine{}
			if _, err := resolver(f).Images(context.Background(), tc.scope, tc.danglingOnly); err != nil {
				t.Fatal(err)
			}
			if len(f.listOpts) != 1 {
				t.Fatalf("%d image lists, want 1", len(f.listOpts))
			}
			o := f.listOpts[0]
			if !o.All || !sameFilters(o.Filters, tc.want) {
				t.Errorf("list options %+v, want all images and filters %v", o, tc.want)
			}
		})
	}
}

func sameFilters(a, b client.Filters) bool {
	if len(a) != len(b) {
		return false
	}
	for term, vs := range a {
		if len(vs) != len(b[term]) {
			return false
		}
		for v, on := range vs {
			if b[term][v] != on {
				return false
			}
		}
	}
	return true
}

func TestImagesMapsTheEnginesList(t *testing.T) {
	f := &fakeEngine{list: []image.Summary{
		{ID: appID, RepoTags: []string{"app:1"}, RepoDigests: []string{"app@" + digest}, Labels: map[string]string{"ci": "1"}},
		{ID: "sha256:0123"},
	}}
	got, err := resolver(f).Images(context.Background(), []string{"ci"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID != appID || !slices.Equal(got[0].Refs, []string{"app:1", "app@" + digest}) || got[0].Labels["ci"] != "1" ||
		got[1].ID != "sha256:0123" || len(got[1].Refs) != 0 {
		t.Errorf("Images = %+v", got)
	}
}

func TestImagesEngineErrorIsAnError(t *testing.T) {
	f := &fakeEngine{err: errEngine}
	if got, err := resolver(f).Images(context.Background(), nil, false); got != nil || !errors.Is(err, errEngine) || !strings.HasPrefix(err.Error(), "list images: ") {
		t.Errorf("Images = %v, %v; want the engine's error", got, err)
	}
}

func TestPluginIsTheOneTheEngineWouldPick(t *testing.T) {
	f := &fakeEngine{plugins: []plugin.Plugin{
		{ID: "abc1230000000000", Name: "vieux/sshfs:latest"},
		{ID: "abd4560000000000", Name: "rexray/ebs:0.11"},
		{ID: "ff00000000000000", Name: "prune-guard:latest"},
		{ID: "0e00000000000000", Name: "localhost:5000/tools/authz:latest"},
	}}
	for _, tc := range []struct {
		name, want string // want: the plugin's ID; "" for none
	}{
		{"rexray/ebs:0.11", "abd4560000000000"},
		{"vieux/sshfs:latest", "abc1230000000000"},
		{"vieux/sshfs", "abc1230000000000"},                // ":latest" implied
		{"localhost:5000/tools/authz", "0e00000000000000"}, // a registry's port is no tag
		{"ff", "ff00000000000000"},                         // a unique ID prefix
		{"abc1230000000000", "abc1230000000000"},           // the whole ID
		{"ab", ""},                                         // ambiguous: the engine would refuse it
		{"rexray/ebs", ""},                                 // only :0.11 is installed
		{"", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, found, err := resolver(f).Plugin(context.Background(), tc.name)
			if err != nil || found != (tc.want != "") || p.ID != tc.want {
				t.Errorf("Plugin(%q) = %+v, found %v, err %v; want ID %q", tc.name, p, found, err, tc.want)
			}
		})
	}
}

func TestPluginEngineErrorIsAnError(t *testing.T) {
	f := &fakeEngine{err: errEngine}
	if _, found, err := resolver(f).Plugin(context.Background(), "vieux/sshfs"); found || !errors.Is(err, errEngine) || !strings.HasPrefix(err.Error(), "list plugins: ") {
		t.Errorf("found %v, err %v; want the engine's error", found, err)
	}
}
