package reclaim

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/distribution/reference"

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
	// Inodes and FreeInodes count the filesystem's inodes; 0 when it
	// does not count them (btrfs).
	Inodes, FreeInodes uint64
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
	// Critical is the usage percentage at or above which reclaim acts even
	// while CI jobs hold image deletes (running, or in their teardown
	// grace), sparing their images; 0 turns it off. Between High and
	// Critical it waits for the jobs.
	Critical float64
	// MinFree makes reclaim act when fewer bytes than this are available,
	// and TargetFree (MinFree when 0) is what a pass frees up to, beside
	// Low; 0 turns each off.
	MinFree, TargetFree int64
	// MinFreeInodes makes reclaim act when fewer inodes than this are
	// free, and free until at least this many are; 0 turns it off.
	MinFreeInodes uint64
	// MinAge keeps images first seen or last used less than this long ago.
	MinAge time.Duration
	// MaxUnused, when positive, removes images unused for longer than this
	// even without disk pressure.
	MaxUnused time.Duration
	// KeepPerRepo, when positive, keeps the N most recently used tags of
	// each repository.
	KeepPerRepo int
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
	// pressure until every target is met.
	Acting bool
	// CriticalPass is set when re-planning within a pass that started at
	// or above Critical during a CI job: it frees to its targets during
	// the job, as the first plan did.
	CriticalPass bool
}

// Plan is what reclaim will do, in order, and why.
type Plan struct {
	Now       time.Time
	Usage     Usage
	High, Low float64
	// Refused says why nothing may be removed now ("" if something may).
	Refused string
	// Waiting is set when, under pressure but below Critical, CI jobs
	// hold image deletes: reclaim waits for them (Refused says so).
	Waiting bool
	// Trigger says why acting is due ("" when nothing triggers it: no
	// pressure, or a pass already acting).
	Trigger string
	// Pressure is whether a target triggers acting (Trigger), or, within a
	// pass that is already acting, whether a target is still unmet.
	Pressure bool
	// Critical is set when the plan acts at or above the critical mark
	// while CI jobs hold image deletes; Held are those jobs, whose images
	// the plan keeps. Its deletes need the guard's grant.
	Critical bool
	Held     rules.RunState
	// Need is how many bytes must be freed to bring usage to Low and the
	// free space to the target; 0 without pressure.
	Need int64
	// Steps are the removable images in the order they are removed:
	// dangling first, then least recently used, children before parents.
	// A step is taken if it is Forced, or while the measured usage stays
	// above Low; Needed marks the steps the size estimates expect to take.
	Steps []Step
	// Keep are the images that stay whatever the pressure, and why.
	Keep []Kept

	opts Options
	// startedPercent is the usage the pass started from, which a critical
	// pass's grants cite.
	startedPercent float64
}

// Options returns the options the plan was made under.
func (p *Plan) Options() Options { return p.opts }

// Satisfied reports whether u meets every target the plan frees up to.
func (p *Plan) Satisfied(u Usage) bool { return p.opts.Satisfied(u) }

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
	Image  Image
	Why    string
	Reason KeepReason
}

// KeepReason is why an image stays, as a figure counts it.
type KeepReason string

// The reasons an image stays.
const (
	// KeepInUse: a container, in any state, uses it or an image built on
	// it.
	KeepInUse KeepReason = "in-use"
	// KeepBase: a listed image built on it stays.
	KeepBase KeepReason = "base"
	// KeepJob: at or above --critical, a CI job that holds image deletes
	// uses it, or it was used within the teardown grace.
	KeepJob KeepReason = "job"
	// KeepProtected: the policy's protect settings name it.
	KeepProtected KeepReason = "protected"
	// KeepPerRepo: it carries one of its repository's N most recently
	// used tags.
	KeepPerRepo KeepReason = "keep-per-repo"
	// KeepYoung: first seen or last used within --min-age.
	KeepYoung KeepReason = "min-age"
)

// KeepReasons lists every KeepReason, for figures that count them.
var KeepReasons = []KeepReason{KeepInUse, KeepBase, KeepJob, KeepProtected, KeepPerRepo, KeepYoung}

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

	lastState int // computeLast: 0 unvisited, 1 visiting, 2 done
	state     int // visit: 0 unvisited, 1 visiting, 2 done
	last      time.Time
	lastNote  string // what last is: "first seen", "last used", ...
	keep      string // why it must stay; "" if it may go
	reason    KeepReason
	perRepo   string // why --keep-per-repo keeps it, if it does
}

// NewPlan decides which images to remove, in order. It is pure: the
// same facts and options always give the same plan.
func NewPlan(f Facts, o Options) Plan {
	p := Plan{Now: f.Now, Usage: f.Usage, High: o.High, Low: o.Low, opts: o}
	p.Trigger = o.trigger(f.Usage)
	p.Pressure = f.Usage.Total > 0 && (p.Trigger != "" || f.Acting && !o.Satisfied(f.Usage))
	if p.Pressure {
		p.Need = o.need(f.Usage)
	}
	if !p.Pressure && o.MaxUnused <= 0 {
		return p // nothing is due, so a run has nothing to refuse
	}
	if p.refuseForRuns(f, o) {
		return p
	}

	g := newGraph(f, o, &p)
	eligible := g.decide(&p)
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
		// During a job, only the disk's state justifies a removal.
		s.Forced = !p.Critical && o.MaxUnused > 0 && unused > o.MaxUnused
		s.Needed = p.Pressure && !s.Forced && est < p.Need
		if !s.Forced && !p.Pressure {
			continue // eligible, but nothing asks for it
		}
		if s.Forced || s.Needed {
			est += s.Estimate
		}
		s.Why = stepWhy(s, n, unused, &p)
		p.Steps = append(p.Steps, s)
	}
	return p
}

// refuseForRuns decides what CI jobs mean for the plan, and reports whether
// nothing may be removed. Removing an image is an image delete: it waits
// for the same jobs, teardown grace included, as the plugin makes a delete
// wait; at or above the critical mark it goes ahead, sparing their images.
// An unknown run state refuses, critical or not.
func (p *Plan) refuseForRuns(f Facts, o Options) bool {
	if f.Runs.Err != nil {
		p.Refused = fmt.Sprintf("the CI run state is unknown (%v); nothing is removed until the engine answers", f.Runs.Err)
		return true
	}
	held := f.Runs.Holding(rules.Classification{Op: rules.OpImageDelete}, false)
	if !held.Holds() {
		return false
	}
	if p.Pressure && o.Critical > 0 && (o.critical(f.Usage) || f.CriticalPass) {
		p.Critical, p.Held = true, held
		return false
	}
	p.Refused = "a CI job holds image deletes: " + rules.HoldReason(held) + "; nothing is removed until it ends"
	if p.Pressure {
		p.Waiting = true
		if o.Critical > 0 {
			p.Refused += fmt.Sprintf(" (%.1f%% used is below --critical %g%%, so reclaim waits for the jobs)", f.Usage.Percent(), o.Critical)
		} else {
			p.Refused += " (--critical is off, so reclaim waits for the jobs)"
		}
	}
	return true
}

// decide fills the plan's kept images and returns the listed images that
// may go.
func (g *graph) decide(p *Plan) []*node {
	for _, n := range g.tops {
		g.computeLast(n)
	}
	g.markPerRepo()
	var eligible []*node
	for _, n := range g.tops {
		g.visit(n)
		if n.keep != "" {
			p.Keep = append(p.Keep, Kept{Image: *n.img, Why: n.keep, Reason: n.reason})
			continue
		}
		eligible = append(eligible, n)
	}
	slices.SortFunc(p.Keep, func(a, b Kept) int { return cmp.Compare(a.Image.Name(), b.Image.Name()) })
	return eligible
}

func stepWhy(s Step, n *node, unused time.Duration, p *Plan) string {
	var why string
	if s.Dangling {
		why = "dangling"
	} else {
		why = "least recently used"
	}
	why += fmt.Sprintf(", %s %s ago", n.lastNote, roundAge(unused))
	if s.Forced {
		why += fmt.Sprintf(", unused for longer than --max-unused %s", p.opts.MaxUnused)
	}
	if p.Critical {
		why += fmt.Sprintf(", during a CI job at or above --critical %g%%", p.opts.Critical)
	}
	return why
}

type graph struct {
	f     Facts
	o     Options
	nodes map[string]*node
	tops  []*node
	users map[string]Container // image ID → a container using it
	// jobs are the images of the CI jobs a critical plan acts during, and
	// why each stays; grace is their teardown grace, within which a use
	// keeps an image too.
	jobs  map[string]string
	grace time.Duration
}

func newGraph(f Facts, o Options, p *Plan) *graph {
	g := &graph{f: f, o: o, nodes: make(map[string]*node, len(f.Images)), users: map[string]Container{}}
	if p.Critical {
		g.jobs, g.grace = jobImages(p.Held, f.Images), p.Held.Grace
	}
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

// computeLast sets n.last: the latest first sighting or use of n or of any
// image built on it.
func (g *graph) computeLast(n *node) {
	if n.lastState != 0 {
		return // done, or a cycle a sane engine never reports
	}
	n.lastState = 1
	defer func() { n.lastState = 2 }()
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
	for _, c := range n.children {
		g.computeLast(c)
		if c.last.After(n.last) {
			n.last, n.lastNote = c.last, "an image built on it "+strings.TrimPrefix(c.lastNote, "an image built on it ")
		}
	}
}

// visit sets n.keep (and its reason) from n and everything built on it.
func (g *graph) visit(n *node) {
	if n.state != 0 {
		return // done, or a cycle a sane engine never reports
	}
	n.state = 1
	defer func() { n.state = 2 }()
	var blocker *node
	for _, c := range n.children {
		g.visit(c)
		if blocker == nil && c.keep != "" {
			blocker = c
		}
	}
	n.keep, n.reason = g.keepWhy(n, blocker)
}

// keepWhy says why n stays ("" if it may go), given the first image built
// on it that stays. An intermediate image is never listed, so its reason is
// worded for the listed image it passes it to.
func (g *graph) keepWhy(n, blocker *node) (string, KeepReason) {
	if c, ok := g.users[n.img.ID]; ok {
		if n.top {
			return fmt.Sprintf("used by container %s (%s)", containerName(c), c.State), KeepInUse
		}
		return fmt.Sprintf("container %s (%s) uses an image built on it", containerName(c), c.State), KeepInUse
	}
	if why, ok := g.jobs[n.img.ID]; ok {
		return why, KeepJob
	}
	if blocker != nil {
		if blocker.top {
			return fmt.Sprintf("%s is built on it and stays", blocker.img.Name()), KeepBase
		}
		return blocker.keep, blocker.reason
	}
	if !n.top {
		return "", ""
	}
	if ok, why := g.o.Protect.Image(n.img.Refs(), n.img.Labels); ok {
		return "protected: " + why, KeepProtected
	}
	if n.perRepo != "" {
		return n.perRepo, KeepPerRepo
	}
	age := g.f.Now.Sub(n.last)
	if age < g.o.MinAge {
		return fmt.Sprintf("%s %s ago, under --min-age %s", n.lastNote, roundAge(age), g.o.MinAge), KeepYoung
	}
	if g.jobs != nil && age < g.grace {
		return fmt.Sprintf("%s %s ago, within the teardown grace %s of the CI jobs reclaim acts during", n.lastNote, roundAge(age), g.grace), KeepJob
	}
	return "", ""
}

// markPerRepo marks the listed images that carry one of the KeepPerRepo
// most recently used tags of their repository (by the image's last use,
// ties by tag). Every tag counts, whatever else keeps its image.
func (g *graph) markPerRepo() {
	if g.o.KeepPerRepo <= 0 {
		return
	}
	type tagged struct {
		repo, tag string
		n         *node
	}
	var all []tagged
	for _, n := range g.tops {
		for _, t := range n.img.RepoTags {
			named, err := reference.ParseNormalizedNamed(t)
			if err != nil || t == "<none>:<none>" {
				continue
			}
			all = append(all, tagged{repo: reference.FamiliarName(named), tag: t, n: n})
		}
	}
	slices.SortFunc(all, func(a, b tagged) int {
		if c := cmp.Compare(a.repo, b.repo); c != 0 {
			return c
		}
		if c := b.n.last.Compare(a.n.last); c != 0 {
			return c
		}
		return cmp.Compare(a.tag, b.tag)
	})
	rank := map[string]int{}
	for _, t := range all {
		rank[t.repo]++
		if rank[t.repo] <= g.o.KeepPerRepo && t.n.perRepo == "" {
			t.n.perRepo = fmt.Sprintf("%s is one of the %d most recently used tags of %s (--keep-per-repo)", t.tag, g.o.KeepPerRepo, t.repo)
		}
	}
}

// jobImages are the images of the jobs that hold image deletes, by ID, and
// why each stays: a live job's container may be gone already (its image
// is then used by no container), and a job in its teardown grace has
// removed its containers.
func jobImages(held rules.RunState, images []Image) map[string]string {
	x := NewIndex(images)
	m := map[string]string{}
	for _, r := range held.Active {
		if id, ok := x.Resolve(r.Image); ok {
			m[id] = "image of active " + r.String() + " (reclaim acts during the job, at or above --critical)"
		}
	}
	for _, r := range held.Ended {
		if id, ok := x.Resolve(r.Image); ok {
			if _, live := m[id]; !live {
				m[id] = fmt.Sprintf("image of %s, in its teardown grace until %s", r.String(), r.Ended.Add(held.Grace).UTC().Format("15:04:05 UTC"))
			}
		}
	}
	return m
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
