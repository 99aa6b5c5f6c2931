package reclaim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/moby/api/types/build"
	mobycontainer "github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"
	mobyimage "github.com/moby/moby/api/types/image"
	"github.com/moby/moby/api/types/system"
	"github.com/moby/moby/client"
)

// fakeEngine is an engine in memory for the reclaimer: images, containers,
// an event log for replays, and a disk whose usage falls as images are
// deleted. Its image removal follows dockerd's (daemon/image_delete.go, the
// graph driver): a name that is a reference untags it, and deletes the image
// only when it was its last reference; an ID deletes the image when its
// references are at most one tag and digests of that tag's repository, and
// is a conflict otherwise ("referenced in multiple repositories"), as it is
// while a container uses the image or an image is built on it. With
// containerd set, a deletion leaves the untagged parents that the graph
// driver prunes with it, as the containerd image store does once it has lost
// track of them.
//
// Every call is recorded; Cleanup fails the test if any removal was forced.
type fakeEngine struct {
	t    *testing.T
	root string // the data root Info reports

	mu         sync.Mutex
	total      uint64 // the disk's size
	base       uint64 // bytes used by everything but images
	images     []*fakeImage
	containers []fakeContainer
	log        []events.Message // for replays
	deny       map[string]bool  // names whose removal the plugin denies
	containerd bool
	activeErr  error // answer to the run tracker's container listing
	removeErr  error // answer to every removal, when set
	calls      []string
	// The build cache: records whose bytes count as used on the disk,
	// and the API version the client negotiated.
	cache      []fakeCacheRecord
	apiVersion string

	// before runs before each removal is handled, deleted after each image
	// a removal deleted; both outside the lock, so they may change the
	// engine.
	before  func(name string)
	deleted func(id string)
}

type fakeImage struct {
	ID, Parent    string
	Tags, Digests []string
	Labels        map[string]string
	Size          int64 // as listed: layers shared with the parent included
	Disk          int64 // bytes its deletion frees; Size if 0
}

// fakeCacheRecord is a build cache record; an image shares a Shared one.
type fakeCacheRecord struct {
	ID       string
	Size     int64
	Shared   bool
	LastUsed time.Time
}

type fakeContainer struct {
	ID, Name, Image, State string
	Labels                 map[string]string
}

// digest is the manifest digest of every digest reference in these tests.
const digest = "@sha256:ded212f7f37e4e67d7926125cfc0939e3fb8a411057ee2e224b16208d43bb74b"

func newFake(t *testing.T, total, base uint64, images ...*fakeImage) *fakeEngine {
	f := &fakeEngine{t: t, root: t.TempDir(), total: total, base: base, images: images, deny: map[string]bool{}}
	t.Cleanup(func() {
		for _, c := range f.removals() {
			if strings.Contains(c, " force") {
				t.Errorf("reclaim forced a removal: %s", c)
			}
		}
	})
	return f
}

// img is a tagged image "sha256:"+name (as in plan_test.go) of size n.
func img(name string, n int64, refs ...string) *fakeImage {
	im := &fakeImage{ID: "sha256:" + name, Size: n}
	for _, r := range refs {
		if strings.Contains(r, "@") {
			im.Digests = append(im.Digests, r)
		} else {
			im.Tags = append(im.Tags, r)
		}
	}
	return im
}

func (im *fakeImage) on(parent string) *fakeImage { im.Parent = "sha256:" + parent; return im }

func (im *fakeImage) refs() []string { return slices.Concat(im.Tags, im.Digests) }

func (im *fakeImage) disk() int64 {
	if im.Disk != 0 {
		return im.Disk
	}
	return im.Size
}

// addContainer adds a container using image (a name or an ID).
func (f *fakeEngine) addContainer(id, imageName, state string, labels map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	imageID := imageName
	if im := f.lookupLocked(imageName); im != nil {
		imageID = im.ID
	}
	f.containers = append(f.containers, fakeContainer{ID: id, Name: "/" + id, Image: imageID, State: state, Labels: labels})
}

// drop deletes an image behind reclaim's back, as another client would.
func (f *fakeEngine) drop(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.images = slices.DeleteFunc(f.images, func(im *fakeImage) bool { return im.ID == id })
}

func (f *fakeEngine) setActiveErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.activeErr = err
}

// ids lists the images the engine holds, by ID.
func (f *fakeEngine) ids() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, im := range f.images {
		out = append(out, im.ID)
	}
	return out
}

// names are an image's references, and whether it is there.
func (f *fakeEngine) names(id string) ([]string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	im := f.byIDLocked(id)
	if im == nil {
		return nil, false
	}
	return im.refs(), true
}

// removals are the removal calls so far: "rmi NAME", with " noprune" and
// " force" for those options.
func (f *fakeEngine) removals() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		if strings.HasPrefix(c, "rmi ") {
			out = append(out, c)
		}
	}
	return out
}

// measure stands in for statfs on the data root.
func (f *fakeEngine) measure(path string) (Usage, error) {
	if path != f.root {
		return Usage{}, fmt.Errorf("measure %s: not the data root %s", path, f.root)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	used := f.base
	for _, im := range f.images {
		used += uint64(im.disk())
	}
	for _, c := range f.cache {
		if !c.Shared {
			used += uint64(c.Size)
		}
	}
	return Usage{Path: path, Total: f.total, Avail: f.total - min(used, f.total)}, nil
}

func (f *fakeEngine) record(format string, args ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

// Ping answers as an engine at API 1.41 does; the fake has no version to
// negotiate.
func (f *fakeEngine) Ping(context.Context, client.PingOptions) (client.PingResult, error) {
	return client.PingResult{APIVersion: "1.41"}, nil
}

func (f *fakeEngine) Info(_ context.Context, _ client.InfoOptions) (client.SystemInfoResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("info")
	return client.SystemInfoResult{Info: system.Info{DockerRootDir: f.root}}, nil
}

func (f *fakeEngine) ImageList(_ context.Context, opts client.ImageListOptions) (client.ImageListResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("images all=%v", opts.All)
	var res client.ImageListResult
	for _, im := range f.images {
		n := int64(0)
		for _, c := range f.containers {
			if c.Image == im.ID {
				n++
			}
		}
		res.Items = append(res.Items, mobyimage.Summary{
			ID: im.ID, ParentID: im.Parent, RepoTags: slices.Clone(im.Tags), RepoDigests: slices.Clone(im.Digests), Labels: im.Labels,
			Size: im.Size, SharedSize: -1, Containers: n,
		})
	}
	return res, nil
}

// ContainerList answers the filters reclaim and the run tracker use:
// status (the tracker's active containers) and ancestor (an image and
// everything built on it).
func (f *fakeEngine) ContainerList(_ context.Context, opts client.ContainerListOptions) (client.ContainerListResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("containers %v", opts.Filters)
	status, ancestor := opts.Filters["status"], opts.Filters["ancestor"]
	if status != nil && f.activeErr != nil {
		return client.ContainerListResult{}, f.activeErr
	}
	var res client.ContainerListResult
	for _, c := range f.containers {
		if status != nil && !status[c.State] {
			continue
		}
		if ancestor != nil && !slices.ContainsFunc(f.ancestorsLocked(c.Image), func(id string) bool {
			for name := range ancestor {
				if im := f.lookupLocked(name); im != nil && im.ID == id {
					return true
				}
			}
			return false
		}) {
			continue
		}
		res.Items = append(res.Items, mobycontainer.Summary{
			ID: c.ID, Names: []string{c.Name}, ImageID: c.Image, Image: c.Image, Labels: c.Labels,
			State: mobycontainer.ContainerState(c.State), Created: now.Add(-24 * time.Hour).Unix(),
		})
	}
	return res, nil
}

// ancestorsLocked is id and the IDs of the images it was built on.
func (f *fakeEngine) ancestorsLocked(id string) []string {
	out := []string{id}
	for im := f.byIDLocked(id); im != nil && im.Parent != "" && !slices.Contains(out, im.Parent); im = f.byIDLocked(im.Parent) {
		out = append(out, im.Parent)
	}
	return out
}

func (f *fakeEngine) ServiceList(_ context.Context, _ client.ServiceListOptions) (client.ServiceListResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("services")
	return client.ServiceListResult{}, nil
}

// Events replays the logged events between since and until that pass the
// type and event filters, then ends the stream (io.EOF), as dockerd does
// for a range that is over. Messages are sent one at a time, before the
// end, as the moby client does.
func (f *fakeEngine) Events(ctx context.Context, opts client.EventsListOptions) client.EventsResult {
	f.mu.Lock()
	f.record("events")
	since, until := parseStamp(f.t, opts.Since), parseStamp(f.t, opts.Until)
	var out []events.Message
	for _, m := range f.log {
		// An undated event (dockerd never sends one) has no time to
		// leave it out by.
		at := time.Unix(0, m.TimeNano)
		if m.TimeNano != 0 && (at.Before(since) || (!until.IsZero() && at.After(until))) {
			continue
		}
		if ts := opts.Filters["type"]; ts != nil && !ts[string(m.Type)] {
			continue
		}
		if as := opts.Filters["event"]; as != nil && !as[string(m.Action)] {
			continue
		}
		out = append(out, m)
	}
	f.mu.Unlock()
	msgs, errs := make(chan events.Message), make(chan error, 1)
	go func() {
		for _, m := range out {
			select {
			case msgs <- m:
			case <-ctx.Done():
				errs <- ctx.Err()
				return
			}
		}
		errs <- io.EOF
	}()
	return client.EventsResult{Messages: msgs, Err: errs}
}

// parseStamp reads the since and until forms reclaim (RFC 3339) and the
// run tracker (seconds.nanoseconds) send.
func parseStamp(t *testing.T, s string) time.Time {
	if s == "" {
		return time.Time{}
	}
	if at, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return at
	}
	sec, nsec, _ := strings.Cut(s, ".")
	a, err1 := strconv.ParseInt(sec, 10, 64)
	b, err2 := strconv.ParseInt(nsec, 10, 64)
	if err1 != nil || err2 != nil {
		t.Errorf("events: unreadable time %q", s)
	}
	return time.Unix(a, b)
}

// grantKey carries a test grant in a removal's context (fakeGranter).
type grantKey struct{}

// ImageRemove removes a name or deletes an image, as dockerd does. A
// removal sent with a grant records it (" grant=N").
func (f *fakeEngine) ImageRemove(ctx context.Context, name string, opts client.ImageRemoveOptions) (client.ImageRemoveResult, error) {
	if f.before != nil {
		f.before(name)
	}
	f.mu.Lock()
	call := "rmi " + name
	if !opts.PruneChildren {
		call += " noprune"
	}
	if opts.Force {
		call += " force"
	}
	if g, ok := ctx.Value(grantKey{}).(int); ok {
		call += fmt.Sprintf(" grant=%d", g)
	}
	f.record("%s", call)
	res, gone, err := f.removeLocked(name, opts)
	f.mu.Unlock()
	if f.deleted != nil {
		for _, id := range gone {
			f.deleted(id)
		}
	}
	return res, err
}

func (f *fakeEngine) removeLocked(name string, opts client.ImageRemoveOptions) (client.ImageRemoveResult, []string, error) {
	var res client.ImageRemoveResult
	if f.removeErr != nil {
		return res, nil, f.removeErr
	}
	if f.deny[name] {
		return res, nil, cerrdefs.ErrPermissionDenied.WithMessage(fmt.Sprintf(
			"Error response from daemon: authorization denied by plugin prune-guard: prune-guard: image delete of %q is blocked (rule keep-protected)", name))
	}
	im := f.lookupLocked(name)
	if im == nil {
		return res, nil, cerrdefs.ErrNotFound.WithMessage("Error response from daemon: No such image: " + name)
	}
	if name != im.ID {
		// A reference: untag it.
		if !opts.Force && singleReference(im.refs()) {
			if c := f.userLocked(im.ID, false); c != nil {
				return res, nil, conflict("conflict: unable to remove repository reference %q (must force) - container %s is using its referenced image %s",
					name, ShortID(c.ID), ShortID(im.ID))
			}
		}
		res.Items = append(res.Items, f.untagLocked(im, name)...)
		if len(im.refs()) > 0 {
			return res, nil, nil
		}
	} else if singleReference(im.refs()) {
		if err := f.conflictLocked(im, opts.Force, false); err != nil {
			return res, nil, err
		}
		for _, r := range im.refs() {
			res.Items = append(res.Items, f.untagLocked(im, r)...)
		}
	}
	var gone []string
	if err := f.deleteLocked(im, opts, &res, &gone); err != nil {
		return res, nil, err
	}
	return res, gone, nil
}

// untagLocked removes ref from im, and with a tag its repository's last,
// that repository's digest references.
func (f *fakeEngine) untagLocked(im *fakeImage, ref string) []mobyimage.DeleteResponse {
	out := []mobyimage.DeleteResponse{{Untagged: ref}}
	named, _ := reference.ParseNormalizedNamed(ref)
	same := func(r string) bool {
		n, err := reference.ParseNormalizedNamed(r)
		return err == nil && named != nil && n.Name() == named.Name()
	}
	im.Tags = slices.DeleteFunc(im.Tags, func(r string) bool { return r == ref })
	im.Digests = slices.DeleteFunc(im.Digests, func(r string) bool { return r == ref })
	if _, canonical := named.(reference.Canonical); named != nil && !canonical && !slices.ContainsFunc(im.Tags, same) {
		im.Digests = slices.DeleteFunc(im.Digests, func(r string) bool {
			if same(r) {
				out = append(out, mobyimage.DeleteResponse{Untagged: r})
				return true
			}
			return false
		})
	}
	return out
}

// conflictLocked is dockerd's checkImageDeleteConflict: children and
// running containers always conflict; stopped containers, and with
// refsCount any reference left, unless forced.
func (f *fakeEngine) conflictLocked(im *fakeImage, force, refsCount bool) error {
	for _, o := range f.images {
		if o.Parent == im.ID {
			return conflict("conflict: unable to delete %s (cannot be forced) - image has dependent child images", ShortID(im.ID))
		}
	}
	if c := f.userLocked(im.ID, true); c != nil {
		return conflict("conflict: unable to delete %s (cannot be forced) - image is being used by running container %s", ShortID(im.ID), ShortID(c.ID))
	}
	if force {
		return nil
	}
	if refsCount && len(im.refs()) > 0 {
		return conflict("conflict: unable to delete %s (must be forced) - image is referenced in multiple repositories", ShortID(im.ID))
	}
	if c := f.userLocked(im.ID, false); c != nil {
		return conflict("conflict: unable to delete %s (must be forced) - image is being used by stopped container %s", ShortID(im.ID), ShortID(c.ID))
	}
	return nil
}

// deleteLocked is dockerd's imageDeleteHelper: it deletes im and, with
// prune, its parents that have no name, no other child and no container
// (unless the engine is the containerd store, which has lost them).
func (f *fakeEngine) deleteLocked(im *fakeImage, opts client.ImageRemoveOptions, res *client.ImageRemoveResult, gone *[]string) error {
	if err := f.conflictLocked(im, opts.Force, true); err != nil {
		return err
	}
	if opts.Force {
		im.Tags, im.Digests = nil, nil
	}
	f.images = slices.DeleteFunc(f.images, func(o *fakeImage) bool { return o == im })
	res.Items = append(res.Items, mobyimage.DeleteResponse{Deleted: im.ID})
	*gone = append(*gone, im.ID)
	if !opts.PruneChildren || f.containerd {
		return nil
	}
	if p := f.byIDLocked(im.Parent); p != nil && len(p.refs()) == 0 && f.conflictLocked(p, false, true) == nil {
		return f.deleteLocked(p, opts, res, gone)
	}
	return nil
}

// userLocked is a container using image id (a running one only, if
// running).
func (f *fakeEngine) userLocked(id string, running bool) *fakeContainer {
	for i, c := range f.containers {
		if c.Image == id && (!running || c.State == "running" || c.State == "paused" || c.State == "restarting") {
			return &f.containers[i]
		}
	}
	return nil
}

func (f *fakeEngine) byIDLocked(id string) *fakeImage {
	for _, im := range f.images {
		if im.ID == id {
			return im
		}
	}
	return nil
}

// lookupLocked finds an image by ID or by reference ("app" is
// "app:latest").
func (f *fakeEngine) lookupLocked(name string) *fakeImage {
	if im := f.byIDLocked(name); im != nil {
		return im
	}
	want, ok := normalize(name)
	if !ok {
		return nil
	}
	for _, im := range f.images {
		for _, r := range im.refs() {
			if n, ok := normalize(r); ok && n == want {
				return im
			}
		}
	}
	return nil
}

// singleReference is dockerd's isSingleReference: at least one reference,
// at most one of them a tag, and every digest reference in the repository
// of the tag (or of the first reference).
func singleReference(refs []string) bool {
	if len(refs) <= 1 {
		return len(refs) == 1
	}
	var tag reference.Named
	repos := map[string]bool{}
	for _, r := range refs {
		n, err := reference.ParseNormalizedNamed(r)
		if err != nil {
			return false
		}
		if _, canonical := n.(reference.Canonical); canonical {
			repos[n.Name()] = true
		} else if tag == nil {
			tag = n
		} else {
			return false
		}
	}
	if tag == nil {
		tag, _ = reference.ParseNormalizedNamed(refs[0])
	}
	return len(repos) == 1 && repos[tag.Name()]
}

func conflict(format string, args ...any) error {
	return cerrdefs.ErrConflict.WithMessage("Error response from daemon: " + fmt.Sprintf(format, args...))
}

var errEngineDown = errors.New("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?")

// ClientVersion is the API version the fake's client negotiated: 1.41
// unless a test sets another.
func (f *fakeEngine) ClientVersion() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.apiVersion == "" {
		return "1.41"
	}
	return f.apiVersion
}

// DiskUsage answers with the build cache's records.
func (f *fakeEngine) DiskUsage(_ context.Context, opts client.DiskUsageOptions) (client.DiskUsageResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("df build-cache=%v verbose=%v", opts.BuildCache, opts.Verbose)
	var res client.DiskUsageResult
	for _, c := range f.cache {
		res.BuildCache.Items = append(res.BuildCache.Items, build.CacheRecord{ID: c.ID, Size: c.Size, Shared: c.Shared})
	}
	return res, nil
}

// BuildCachePrune prunes as BuildKit's cache manager does with a budget:
// the least recently used records no image shares, until the unshared
// total is under it. The budget is keep-storage (ReservedSpace, as the
// client sends it below API 1.48) or max(MaxUsedSpace, ReservedSpace).
func (f *fakeEngine) BuildCachePrune(_ context.Context, opts client.BuildCachePruneOptions) (client.BuildCachePruneResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	keep := max(opts.MaxUsedSpace, opts.ReservedSpace)
	f.record("build-prune all=%v reserved=%d max-used=%d", opts.All, opts.ReservedSpace, opts.MaxUsedSpace)
	if opts.All || keep == 0 {
		f.t.Errorf("a build prune without a budget, or with all: %+v", opts)
	}
	var total int64
	for _, c := range f.cache {
		if !c.Shared {
			total += c.Size
		}
	}
	slices.SortFunc(f.cache, func(a, b fakeCacheRecord) int { return a.LastUsed.Compare(b.LastUsed) })
	var res client.BuildCachePruneResult
	f.cache = slices.DeleteFunc(f.cache, func(c fakeCacheRecord) bool {
		if c.Shared || total <= keep {
			return false
		}
		total -= c.Size
		res.Report.CachesDeleted = append(res.Report.CachesDeleted, c.ID)
		res.Report.SpaceReclaimed += uint64(c.Size)
		return true
	})
	return res, nil
}
