package reclaim

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/prune-guard/prune-guard/rules"
)

// Image is one image as the engine lists it with all=1 (intermediate images
// of the classic builder included, so that parents and children are known).
type Image struct {
	ID          string
	ParentID    string
	RepoTags    []string
	RepoDigests []string
	Labels      map[string]string
	// Size is the image's size on disk, layers shared with other images
	// included.
	Size int64
	// SharedSize is the part of Size that other images share, or -1 when
	// the engine does not say (API < 1.42).
	SharedSize int64
}

// Refs returns the image's tag and digest references, without the
// "<none>:<none>" placeholders that old engines list for untagged images.
func (im Image) Refs() []string {
	var refs []string
	for _, r := range slices.Concat(im.RepoTags, im.RepoDigests) {
		if r != "<none>:<none>" && r != "<none>@<none>" && r != "" {
			refs = append(refs, r)
		}
	}
	return refs
}

// Dangling reports whether nothing refers to the image by name: no tag and
// no digest reference.
func (im Image) Dangling() bool { return len(im.Refs()) == 0 }

// Name is how an operator recognizes the image: its first reference and
// short ID.
func (im Image) Name() string {
	if refs := im.Refs(); len(refs) > 0 {
		return refs[0] + " (" + ShortID(im.ID) + ")"
	}
	return "<none> (" + ShortID(im.ID) + ")"
}

// ShortID is an image or container ID as docker prints it: 12 hex digits.
func ShortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Container is one container, in any state.
type Container struct {
	ID      string
	Name    string
	ImageID string
	// State is the engine's: created, running, paused, restarting,
	// removing, exited or dead.
	State   string
	Created time.Time
}

// Usage is how full the filesystem holding the engine's data root is.
type Usage struct {
	Path  string // the engine's data root
	Total uint64 // bytes
	Avail uint64 // bytes an unprivileged writer can still use
}

// Percent is the used share of the filesystem: 100 × (total − available) /
// total. Blocks reserved for root count as used, as they do for the kubelet:
// the engine's writers cannot rely on them.
func (u Usage) Percent() float64 {
	if u.Total == 0 {
		return 100
	}
	return 100 * float64(u.Total-min(u.Avail, u.Total)) / float64(u.Total)
}

// Options are the operator's thresholds and protections.
type Options struct {
	// High is the usage percentage at or above which reclaim acts; Low is
	// the one it frees down to.
	High, Low float64
	// MinAge keeps images first seen or last used less than this long ago.
	MinAge time.Duration
	// MaxUnused, when positive, removes images unused for longer than this
	// even without disk pressure.
	MaxUnused time.Duration
	// Protect names the images that are never removed.
	Protect rules.Protection
}

// Facts are everything a plan is decided on.
type Facts struct {
	Now   time.Time
	Usage Usage
	// Images are all of the engine's images, intermediate ones included.
	Images []Image
	// Containers are all of the engine's containers, in every state.
	Containers []Container
	// Records are first sightings and last uses, by image ID.
	Records map[string]Record
	// Runs are the active CI runs; a non-nil Err means they are unknown.
	Runs rules.RunState
	// Acting is set when re-planning within a pass that started under
	// pressure: a pass acts from High down to Low, so it stays under
	// pressure until usage is at or below Low.
	Acting bool
}

// Plan is what reclaim will do, in order, and why.
type Plan struct {
	Now       time.Time
	Usage     Usage
	High, Low float64
	// Refused says why nothing may be removed now ("" if something may).
	Refused string
	// Pressure is whether usage is at or above High, or, within a pass
	// that is already acting, above Low.
	Pressure bool
	// Need is how many bytes must be freed to bring usage to Low; 0
	// without pressure.
	Need int64
	// Steps are the removable images in the order they are removed:
	// dangling first, then least recently used, children before parents.
	// A step is taken if it is Forced, or while the measured usage stays
	// above Low; Needed marks the steps the size estimates expect to take.
	Steps []Step
	// Keep are the images that stay whatever the pressure, and why.
	Keep []Kept
}

// Step is one image reclaim may remove.
type Step struct {
	Image    Image
	Dangling bool
	// LastUse is the latest first sighting or use of the image or of any
	// image built on it.
	LastUse time.Time
	// Estimate is the bytes its removal should free: its own layers,
	// without those it shares with the image it was built on.
	Estimate int64
	// Intermediates are the classic builder's intermediate images that
	// only this image was built on, nearest first: its removal must take
	// them too. The graph driver deletes them with the image; the
	// containerd image store (28.5, 29) lists them as dangling images and
	// stops deleting them once an ancestor they share is gone (its
	// "failed to get image parents"), so they would hold the image's
	// layers.
	Intermediates []string
	// Forced is set when the image has been unused for longer than
	// MaxUnused: it goes with or without pressure.
	Forced bool
	// Needed is set when, by the estimates, the disk is still above Low
	// before this step.
	Needed bool
	Why    string
}

// Kept is an image that stays, and why.
type Kept struct {
	Image Image
	Why   string
}

// Planned reports the bytes the forced and needed steps should free.
func (p Plan) Planned() int64 {
	var n int64
	for _, s := range p.Steps {
		if s.Forced || s.Needed {
			n += s.Estimate
		}
	}
	return n
}

// node is an image in the parent/child graph.
type node struct {
	img      *Image
	parent   *node
	children []*node
	top      bool // listed by "docker images": tagged, or without children

	state    int // 0 unvisited, 1 visiting, 2 done
	last     time.Time
	lastNote string // what last is: "first seen", "last used", ...
	keep     string // why it must stay; "" if it may go
}

// NewPlan decides which images to remove, in which order. It is pure: the
// same facts and options always give the same plan.
func NewPlan(f Facts, o Options) Plan {
	p := Plan{Now: f.Now, Usage: f.Usage, High: o.High, Low: o.Low}
	p.Pressure = f.Usage.Total > 0 && (f.Usage.Percent() >= o.High || f.Acting && f.Usage.Percent() > o.Low)
	if p.Pressure {
		want := uint64(math.Ceil(float64(f.Usage.Total) * (100 - o.Low) / 100))
		if want > f.Usage.Avail {
			p.Need = int64(want - f.Usage.Avail)
		}
	}
	if !p.Pressure && o.MaxUnused <= 0 {
		return p // nothing is due, so a run has nothing to refuse
	}
	if f.Runs.Err != nil {
		p.Refused = fmt.Sprintf("the CI run state is unknown (%v); nothing is removed until the engine answers", f.Runs.Err)
		return p
	}
	// Removing an image is an image delete: it waits for the same jobs,
	// teardown grace included, as the plugin makes a delete wait.
	if held := f.Runs.Holding(rules.Classification{Op: rules.OpImageDelete}, false); held.Holds() {
		p.Refused = "a CI job holds image deletes: " + rules.HoldReason(held) + "; nothing is removed until it ends"
		return p
	}

	g := newGraph(f, o)
	var eligible []*node
	for _, n := range g.tops {
		g.visit(n)
		if n.keep != "" {
			p.Keep = append(p.Keep, Kept{Image: *n.img, Why: n.keep})
			continue
		}
		eligible = append(eligible, n)
	}
	slices.SortFunc(p.Keep, func(a, b Kept) int { return cmp.Compare(a.Image.Name(), b.Image.Name()) })

	var est int64
	for _, n := range g.order(eligible) {
		s := Step{
			Image:    *n.img,
			Dangling: n.img.Dangling(),
			LastUse:  n.last,
			Estimate: g.estimate(n),
		}
		s.Intermediates = g.intermediates(n)
		unused := f.Now.Sub(n.last)
		s.Forced = o.MaxUnused > 0 && unused > o.MaxUnused
		s.Needed = p.Pressure && !s.Forced && est < p.Need
		if !s.Forced && !p.Pressure {
			continue // eligible, but nothing asks for it
		}
		if s.Forced || s.Needed {
			est += s.Estimate
		}
		s.Why = stepWhy(s, n, unused, o)
		p.Steps = append(p.Steps, s)
	}
	return p
}

func stepWhy(s Step, n *node, unused time.Duration, o Options) string {
	var why string
	if s.Dangling {
		why = "dangling"
	} else {
		why = "least recently used"
	}
	why += fmt.Sprintf(", %s %s ago", n.lastNote, roundAge(unused))
	if s.Forced {
		why += fmt.Sprintf(", unused for longer than --max-unused %s", o.MaxUnused)
	}
	return why
}

type graph struct {
	f     Facts
	o     Options
	nodes map[string]*node
	tops  []*node
	users map[string]Container // image ID → a container using it
}

func newGraph(f Facts, o Options) *graph {
	g := &graph{f: f, o: o, nodes: make(map[string]*node, len(f.Images)), users: map[string]Container{}}
	for i := range f.Images {
		im := &f.Images[i]
		if _, dup := g.nodes[im.ID]; dup || im.ID == "" {
			continue
		}
		g.nodes[im.ID] = &node{img: im}
	}
	for _, n := range g.nodes {
		if par, ok := g.nodes[n.img.ParentID]; ok && par != n {
			n.parent = par
			par.children = append(par.children, n)
		}
	}
	for _, n := range g.nodes {
		slices.SortFunc(n.children, func(a, b *node) int { return cmp.Compare(a.img.ID, b.img.ID) })
		n.top = !n.img.Dangling() || len(n.children) == 0
		if n.top {
			g.tops = append(g.tops, n)
		}
	}
	slices.SortFunc(g.tops, func(a, b *node) int { return cmp.Compare(a.img.ID, b.img.ID) })
	// The first container by name, so that reasons do not change from
	// one pass to the next.
	cs := slices.Clone(f.Containers)
	slices.SortFunc(cs, func(a, b Container) int { return cmp.Compare(a.Name+a.ID, b.Name+b.ID) })
	for _, c := range cs {
		if _, ok := g.users[c.ImageID]; !ok {
			g.users[c.ImageID] = c
		}
	}
	return g
}

// visit computes n.last and n.keep from n and everything built on it.
func (g *graph) visit(n *node) {
	if n.state != 0 {
		return // done, or a cycle a sane engine never reports
	}
	n.state = 1
	defer func() { n.state = 2 }()

	rec, ok := g.f.Records[n.img.ID]
	switch {
	case ok && !rec.LastUsed.IsZero() && rec.LastUsed.After(rec.FirstSeen):
		n.last, n.lastNote = rec.LastUsed, "last used"
	case ok && !rec.FirstSeen.IsZero():
		n.last, n.lastNote = rec.FirstSeen, "first seen"
	case n.top:
		// Never recorded: first seen now, never its build date, which
		// says nothing about when this host got it.
		n.last, n.lastNote = g.f.Now, "first seen"
	}
	var blocker *node
	for _, c := range n.children {
		g.visit(c)
		if c.last.After(n.last) {
			n.last, n.lastNote = c.last, "an image built on it "+strings.TrimPrefix(c.lastNote, "an image built on it ")
		}
		if blocker == nil && c.keep != "" {
			blocker = c
		}
	}

	// An intermediate image is never listed, so its reason is worded for
	// the listed image it passes it to.
	if c, ok := g.users[n.img.ID]; ok {
		if n.top {
			n.keep = fmt.Sprintf("used by container %s (%s)", containerName(c), c.State)
		} else {
			n.keep = fmt.Sprintf("container %s (%s) uses an image built on it", containerName(c), c.State)
		}
		return
	}
	if blocker != nil {
		if blocker.top {
			n.keep = fmt.Sprintf("%s is built on it and stays", blocker.img.Name())
		} else {
			n.keep = blocker.keep
		}
		return
	}
	if !n.top {
		return
	}
	if ok, why := g.o.Protect.Image(n.img.Refs(), n.img.Labels); ok {
		n.keep = "protected: " + why
		return
	}
	if age := g.f.Now.Sub(n.last); age < g.o.MinAge {
		n.keep = fmt.Sprintf("%s %s ago, under --min-age %s", n.lastNote, roundAge(age), g.o.MinAge)
	}
}

func containerName(c Container) string {
	if c.Name != "" {
		return strings.TrimPrefix(c.Name, "/")
	}
	return ShortID(c.ID)
}

// order sorts the eligible images: dangling first, then least recently
// used, ties by ID; an image comes after every eligible image built on it,
// because the engine refuses to remove an image that has children.
func (g *graph) order(eligible []*node) []*node {
	less := func(a, b *node) int {
		if da, db := a.img.Dangling(), b.img.Dangling(); da != db {
			if da {
				return -1
			}
			return 1
		}
		if c := a.last.Compare(b.last); c != 0 {
			return c
		}
		return cmp.Compare(a.img.ID, b.img.ID)
	}
	sorted := slices.Clone(eligible)
	slices.SortFunc(sorted, less)

	out := make([]*node, 0, len(sorted))
	emitted := make(map[*node]bool, len(sorted))
	var emit func(n *node)
	emit = func(n *node) {
		if emitted[n] {
			return
		}
		emitted[n] = true
		kids := g.topDescendants(n, nil)
		slices.SortFunc(kids, less)
		for _, k := range kids {
			emit(k)
		}
		out = append(out, n)
	}
	for _, n := range sorted {
		emit(n)
	}
	return out
}

// topDescendants appends the nearest listed images built on n: its
// children, looking through intermediate images.
func (g *graph) topDescendants(n *node, acc []*node) []*node {
	for _, c := range n.children {
		if c.top {
			acc = append(acc, c)
		} else if c.state != 1 { // not on a cycle
			c.state = 1
			acc = g.topDescendants(c, acc)
			c.state = 2
		}
	}
	return acc
}

// estimate is the bytes removing n should free: n's size above the nearest
// image it was built on that survives n's removal (a listed image, or an
// intermediate one with other children), because removal also deletes the
// intermediate images only n used. An image built on nothing the engine
// lists (pulled, loaded) frees what it shares with no other image, when the
// engine reports shared sizes (API >= 1.42).
//
// The engine's shared size is no estimate for a built image: it counts the
// layers n shares with its own intermediate images, which go with it (all
// of them, for an image whose last step adds no layer), so it would read
// as nothing freed.
func (g *graph) estimate(n *node) int64 {
	if n.parent == nil && n.img.SharedSize >= 0 {
		return max(n.img.Size-n.img.SharedSize, 0)
	}
	if p := g.survivor(n); p != nil {
		return max(n.img.Size-p.img.Size, 0)
	}
	return n.img.Size
}

// survivor is the nearest image n was built on that stays when n goes: a
// listed image or an intermediate one with other children; nil if none.
func (g *graph) survivor(n *node) *node {
	// Bounded by the number of images, against a cycle a sane engine
	// never reports.
	p := n.parent
	for range len(g.nodes) {
		if p == nil || p.top || len(p.children) > 1 {
			return p
		}
		p = p.parent
	}
	return nil
}

// intermediates lists the intermediate images between n and its survivor:
// those only n was built on.
func (g *graph) intermediates(n *node) []string {
	var ids []string
	p := n.parent
	for range len(g.nodes) {
		if p == nil || p.top || len(p.children) > 1 {
			break
		}
		ids = append(ids, p.img.ID)
		p = p.parent
	}
	return ids
}

// roundAge prints a duration as an operator reads an age: 3h5m, 12m, 40s.
func roundAge(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return d.Round(time.Second).String()
	default:
		return strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
	}
}
