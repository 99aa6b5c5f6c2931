package auditlog

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/distribution/reference"

	"github.com/prune-guard/prune-guard/audit"
)

// The cache report reads pull records (lines with a pull field, which the
// guard writes for every POST /images/create that pulls) and reclaim's
// removals ("reclaim removed image" events), and says how well the host's
// image cache works: per registry the pulls and how many the cache had,
// Docker Hub's pulls in its rate-limit window, and the images reclaim
// removed that were pulled again soon after ("evicted too early"), each
// with the reclaim setting that would have kept it.

const (
	// HubWindow is Docker Hub's rate-limit window: pulls are counted per
	// 6 hours (docs.docker.com/docker-hub/usage/pulls/).
	HubWindow = 6 * time.Hour
	// EvictionWindow is how soon after its removal a pull of an image
	// counts as the removal being too early.
	EvictionWindow = 24 * time.Hour
	// HubRegistry is Docker Hub as pull records name it.
	HubRegistry = "docker.io"
	// maxEvictions bounds the evictions a report lists; the rest are
	// counted.
	maxEvictions = 1000
	// removedMsg is the event reclaim writes for each image it removes
	// (reclaim/reclaimer.go, stepFields).
	removedMsg = "reclaim removed image"
)

// CacheOptions say what a cache report covers.
type CacheOptions struct {
	// Since leaves out pulls and removals recorded before it (zero: none).
	Since time.Time
	// At is the end of the Docker Hub window (normally now). The window
	// is counted over every line read, whatever Since says.
	At time.Time
	// HubLimit is the Docker Hub pull limit per HubWindow to compare with.
	HubLimit int64
	// JSON writes the report as one JSON object.
	JSON bool
}

// RegistryPulls counts one registry's pulls.
type RegistryPulls struct {
	Pulls   int64 `json:"pulls"`
	Hit     int64 `json:"hit"`
	Miss    int64 `json:"miss"`
	Unknown int64 `json:"unknown"`
	// Failed counts pulls whose record carries an error (proxy mode).
	Failed int64 `json:"failed"`
	// Relayed counts the pulls a proxy relayed, whose layers and bytes
	// were counted from their progress.
	Relayed          int64 `json:"relayed"`
	LayersReused     int64 `json:"layers_reused"`
	LayersDownloaded int64 `json:"layers_downloaded"`
	BytesDownloaded  int64 `json:"bytes_downloaded"`
}

// HitRatio is hits among the pulls whose result is known; ok is false when
// there are none.
func (r RegistryPulls) HitRatio() (ratio float64, ok bool) {
	if n := r.Hit + r.Miss; n > 0 {
		return float64(r.Hit) / float64(n), true
	}
	return 0, false
}

// Eviction is an image reclaim removed that was pulled again within
// EvictionWindow.
type Eviction struct {
	// Reference is the pulled reference, fully qualified.
	Reference string
	// Image is the ID of the image reclaim removed.
	Image                string
	Removed, PulledAgain time.Time
	// LastUsed is when reclaim last saw the image used; zero when the
	// removal record does not say.
	LastUsed time.Time
	// Why is reclaim's reason for removing it.
	Why string
}

// removal is an image reclaim removed, under each of its references.
type removal struct {
	image, why     string
	time, lastUsed time.Time
	pulled         bool
}

// Cache is a cache report's counts.
type Cache struct {
	Options CacheOptions
	// Read, Skipped, TooLong and FirstSkipped are as in Summary.
	Read, Skipped, TooLong int64
	FirstSkipped           int
	// Pulls counts the pull records kept; First and Last are their times.
	Pulls       int64
	First, Last time.Time
	// HubPulls counts Docker Hub pulls in the window that ends at At.
	HubPulls int64
	// Evictions lists the first maxEvictions images evicted too early;
	// MoreEvictions counts the rest.
	Evictions     []Eviction
	MoreEvictions int64

	registries map[string]*RegistryPulls
	full       bool
	removed    map[string]*removal
}

// NewCache returns an empty cache report.
func NewCache(o CacheOptions) *Cache {
	return &Cache{Options: o, registries: map[string]*RegistryPulls{}, removed: map[string]*removal{}}
}

// Add counts one line.
func (c *Cache) Add(l *Line) {
	if l.Pull != nil && !l.IsDecision {
		c.hub(l)
	}
	if !c.Options.Since.IsZero() && (l.Time.IsZero() || l.Time.Before(c.Options.Since)) {
		return
	}
	switch {
	case l.Pull != nil && !l.IsDecision:
		c.pull(l)
	case !l.IsDecision && l.Msg == removedMsg:
		c.removal(l)
	}
}

// hub counts a Docker Hub pull in the window.
func (c *Cache) hub(l *Line) {
	at := c.Options.At
	if l.Pull.Registry == HubRegistry && !l.Time.IsZero() && l.Time.After(at.Add(-HubWindow)) && !l.Time.After(at) {
		c.HubPulls++
	}
}

// pull counts a pull record, and finds the removal it undoes.
func (c *Cache) pull(l *Line) {
	c.Pulls++
	if !l.Time.IsZero() {
		if c.First.IsZero() || l.Time.Before(c.First) {
			c.First = l.Time
		}
		if l.Time.After(c.Last) {
			c.Last = l.Time
		}
	}
	r := c.registry(l.Pull.Registry)
	r.Pulls++
	switch l.Pull.Result {
	case audit.PullHit:
		r.Hit++
	case audit.PullMiss:
		r.Miss++
	default:
		r.Unknown++
	}
	if l.Pull.Error != "" {
		r.Failed++
	}
	if p := l.Pull.Progress; p != nil {
		r.Relayed++
		r.LayersReused += p.LayersReused
		r.LayersDownloaded += p.LayersDownloaded
		r.BytesDownloaded += p.BytesDownloaded
	}
	c.evicted(l)
}

// registry is the counts of a registry, (other) once MaxKeys are held.
func (c *Cache) registry(name string) *RegistryPulls {
	name = truncate(name)
	if r, ok := c.registries[name]; ok {
		return r
	}
	if len(c.registries) >= MaxKeys {
		c.full = true
		name = Other
		if r, ok := c.registries[name]; ok {
			return r
		}
	}
	r := &RegistryPulls{}
	c.registries[name] = r
	return r
}

// removedFields are the fields of reclaim's removal event that count.
type removedFields struct {
	Image    string `json:"image"`
	Refs     string `json:"refs"`
	Why      string `json:"why"`
	LastUsed string `json:"last_used"`
}

// removal remembers an image reclaim removed under each of its references.
func (c *Cache) removal(l *Line) {
	var f removedFields
	if l.Time.IsZero() || json.Unmarshal(l.Raw, &f) != nil || f.Refs == "" {
		return
	}
	c.expire(l.Time)
	r := &removal{image: f.Image, why: f.Why, time: l.Time}
	if t, err := time.Parse(time.RFC3339Nano, f.LastUsed); err == nil {
		r.lastUsed = t
	}
	for _, ref := range strings.Split(f.Refs, ",") {
		named, err := reference.ParseNormalizedNamed(strings.TrimSpace(ref))
		if err != nil || len(c.removed) >= MaxKeys {
			continue
		}
		c.removed[named.String()] = r
	}
}

// expire forgets removals too old to be undone by a pull at now, when the
// table is full.
func (c *Cache) expire(now time.Time) {
	if len(c.removed) < MaxKeys {
		return
	}
	for ref, r := range c.removed {
		if now.Sub(r.time) > EvictionWindow || r.pulled {
			delete(c.removed, ref)
		}
	}
}

// evicted records a pull of an image reclaim removed within the window.
func (c *Cache) evicted(l *Line) {
	if l.Time.IsZero() {
		return
	}
	for _, ref := range pulledForms(l.Target) {
		r, ok := c.removed[ref]
		if !ok || r.pulled || l.Time.Before(r.time) || l.Time.Sub(r.time) > EvictionWindow {
			continue
		}
		r.pulled = true
		if len(c.Evictions) >= maxEvictions {
			c.MoreEvictions++
			return
		}
		c.Evictions = append(c.Evictions, Eviction{Reference: l.Target, Image: r.image, Removed: r.time,
			PulledAgain: l.Time, LastUsed: r.lastUsed, Why: r.why})
		return
	}
}

// pulledForms are the references a pulled reference matches an image by:
// itself, and for name:tag@digest its tag and its digest alone.
func pulledForms(target string) []string {
	named, err := reference.ParseNormalizedNamed(target)
	if err != nil {
		return nil
	}
	forms := []string{named.String()}
	t, tagged := named.(reference.Tagged)
	d, digested := named.(reference.Digested)
	if tagged && digested {
		if n, err := reference.WithTag(reference.TrimNamed(named), t.Tag()); err == nil {
			forms = append(forms, n.String())
		}
		if n, err := reference.WithDigest(reference.TrimNamed(named), d.Digest()); err == nil {
			forms = append(forms, n.String())
		}
	}
	return forms
}

func (c *Cache) setRead(r *Reader) {
	c.Read, c.Skipped, c.TooLong, c.FirstSkipped = r.Read, r.Skipped, r.TooLong, r.FirstSkipped
}

// CacheReport reads an audit log from in and writes the cache report to
// out. Lines that are not audit records are counted, not fatal; the error
// is in's or out's.
func CacheReport(in io.Reader, out io.Writer, o CacheOptions) (*Cache, error) {
	r := NewReader(in)
	c := NewCache(o)
	for {
		l, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			c.setRead(r)
			return c, readError(r, err)
		}
		c.Add(l)
	}
	c.setRead(r)
	var err error
	if o.JSON {
		err = c.writeJSON(out)
	} else {
		err = c.WriteText(out)
	}
	if err != nil {
		return c, fmt.Errorf("write: %w", err)
	}
	return c, nil
}
