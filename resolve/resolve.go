// Package resolve asks the engine what a request's name refers to: the image
// behind a tag, an ID, a short ID or a digest, and the plugin behind a name
// or an ID prefix. The engine resolves names exactly as it will when it runs
// the request, which is why protection asks it instead of parsing names.
//
// It must never change anything on the engine.
package resolve

import (
	"context"
	"fmt"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
)

// Image is what the engine holds under a name.
type Image struct {
	ID     string
	Refs   []string // RepoTags and RepoDigests
	Labels map[string]string
}

// Plugin is an installed managed plugin.
type Plugin struct {
	ID   string
	Name string
}

// Engine is what the resolver asks the engine. *engine.Client is the real
// one.
type Engine interface {
	ImageInspect(ctx context.Context, image string, options ...client.ImageInspectOption) (client.ImageInspectResult, error)
	ImageList(ctx context.Context, options client.ImageListOptions) (client.ImageListResult, error)
	PluginList(ctx context.Context, options client.PluginListOptions) (client.PluginListResult, error)
}

// Resolver resolves names on one engine.
type Resolver struct {
	c       Engine
	timeout time.Duration
}

// New returns a resolver that asks e; each question is bounded by timeout.
func New(e Engine, timeout time.Duration) *Resolver {
	return &Resolver{c: e, timeout: timeout}
}

// Image returns the image the engine finds under name. found is false when
// there is no such image (the delete would fail too).
func (r *Resolver) Image(ctx context.Context, name string) (img Image, found bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	res, err := r.c.ImageInspect(ctx, name)
	if cerrdefs.IsNotFound(err) {
		return Image{}, false, nil
	}
	if err != nil {
		return Image{}, false, fmt.Errorf("inspect image %q: %w", name, err)
	}
	img = Image{ID: res.ID, Refs: append(append([]string(nil), res.RepoTags...), res.RepoDigests...)}
	if res.Config != nil {
		img.Labels = res.Config.Labels
	}
	return img, true, nil
}

// Plugin returns the installed plugin the engine would pick for name: an
// exact name (":latest" implied), else a unique ID prefix. found is false
// when none matches.
func (r *Resolver) Plugin(ctx context.Context, name string) (p Plugin, found bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	res, err := r.c.PluginList(ctx, client.PluginListOptions{})
	if err != nil {
		return Plugin{}, false, fmt.Errorf("list plugins: %w", err)
	}
	full := name
	if !strings.Contains(name[strings.LastIndex(name, "/")+1:], ":") {
		full = name + ":latest"
	}
	var byPrefix []Plugin
	for _, pl := range res.Items {
		if pl.Name == name || pl.Name == full {
			return Plugin{ID: pl.ID, Name: pl.Name}, true, nil
		}
		if name != "" && strings.HasPrefix(pl.ID, name) {
			byPrefix = append(byPrefix, Plugin{ID: pl.ID, Name: pl.Name})
		}
	}
	if len(byPrefix) == 1 {
		return byPrefix[0], true, nil
	}
	return Plugin{}, false, nil
}

// Images lists the images an image prune with this label scope could
// remove: those carrying every label of scope (all images for none), only
// dangling ones when danglingOnly. The list is the engine's own answer to the
// same label filter the prune carries.
func (r *Resolver) Images(ctx context.Context, scope []string, danglingOnly bool) ([]Image, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	f := make(client.Filters)
	if len(scope) > 0 {
		f = f.Add("label", scope...)
	}
	if danglingOnly {
		f = f.Add("dangling", "true")
	}
	res, err := r.c.ImageList(ctx, client.ImageListOptions{All: true, Filters: f})
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	out := make([]Image, 0, len(res.Items))
	for _, s := range res.Items {
		out = append(out, Image{ID: s.ID, Refs: append(append([]string(nil), s.RepoTags...), s.RepoDigests...), Labels: s.Labels})
	}
	return out, nil
}
