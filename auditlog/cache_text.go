package auditlog

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/distribution/reference"
)

// Advice is what would have kept an image reclaim evicted too early: any
// one of the three.
type Advice struct {
	// MinAge is a reclaim --min-age above the time the image had been
	// unused when it was pulled again; "" when the removal did not record
	// its last use.
	MinAge string `json:"min_age,omitempty"`
	// RaiseMinAgeBy is, when MinAge is unknown, how much longer than the
	// --min-age in force it had to be at least: the time between the
	// removal and the pull.
	RaiseMinAgeBy string `json:"raise_min_age_by,omitempty"`
	// ProtectImage is a reclaim --protect-image pattern (a policy's
	// protect.images entry) that covers the repository.
	ProtectImage string `json:"protect_image"`
	// KeepPerRepo is a reclaim --keep-per-repo that covers as many tags of
	// the repository as were evicted too early, if they were its most
	// recently used.
	KeepPerRepo int `json:"keep_per_repo"`
}

// Advice says what would have kept each eviction, in the order of
// Evictions.
func (c *Cache) Advice() []Advice {
	tags := map[string]map[string]bool{} // repository -> tags evicted too early
	for _, e := range c.Evictions {
		repo, tag := repoTag(e.Reference)
		if tags[repo] == nil {
			tags[repo] = map[string]bool{}
		}
		tags[repo][tag] = true
	}
	out := make([]Advice, len(c.Evictions))
	for i, e := range c.Evictions {
		repo, tag := repoTag(e.Reference)
		a := Advice{KeepPerRepo: max(1, len(tags[repo])), ProtectImage: repo + ":*"}
		if tag == "" {
			a.ProtectImage = repo + "@*"
		}
		if e.LastUsed.IsZero() {
			a.RaiseMinAgeBy = short(e.PulledAgain.Sub(e.Removed))
		} else {
			idle := e.PulledAgain.Sub(e.LastUsed)
			a.MinAge = fmt.Sprintf("%dh", int64(idle/time.Hour)+1)
		}
		out[i] = a
	}
	return out
}

// repoTag is a reference's repository in familiar form and its tag.
func repoTag(ref string) (repo, tag string) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return ref, ""
	}
	if t, ok := named.(reference.Tagged); ok {
		tag = t.Tag()
	}
	return reference.FamiliarName(named), tag
}

// familiar is a reference as people write it, a digest cut to 12 digits:
// node:20, old-app@sha256:bbbbbbbbbbbb….
func familiar(ref string) string {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return ref
	}
	s := reference.FamiliarString(named)
	if d, ok := named.(reference.Digested); ok && len(d.Digest().Encoded()) > 12 {
		s = strings.TrimSuffix(s, d.Digest().Encoded()) + d.Digest().Encoded()[:12] + "…"
	}
	return s
}

// short prints a duration to the minute: 1h30m, 45m, 2h.
func short(d time.Duration) string {
	d = d.Round(time.Minute)
	h, m := int64(d/time.Hour), int64(d%time.Hour/time.Minute)
	switch {
	case d < time.Minute:
		return "under a minute"
	case h == 0:
		return fmt.Sprintf("%dm", m)
	case m == 0:
		return fmt.Sprintf("%dh", h)
	}
	return fmt.Sprintf("%dh%dm", h, m)
}

// Registries returns the registries counted, most pulls first.
func (c *Cache) Registries() []string {
	names := make([]string, 0, len(c.registries))
	for n := range c.registries {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int {
		return cmp.Or(cmp.Compare(c.registries[b].Pulls, c.registries[a].Pulls), strings.Compare(a, b))
	})
	return names
}

// Registry returns one registry's counts.
func (c *Cache) Registry(name string) RegistryPulls {
	if r := c.registries[name]; r != nil {
		return *r
	}
	return RegistryPulls{}
}

// WriteText writes the report for people.
func (c *Cache) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "cache: %s in %s", plural(c.Pulls, "pull", "pulls"), plural(c.Read, "line", "lines"))
	if !c.First.IsZero() {
		fmt.Fprintf(&b, ", %s to %s", formatTime(c.First), formatTime(c.Last))
	}
	b.WriteString("\n")
	if !c.Options.Since.IsZero() {
		fmt.Fprintf(&b, "selected: since %s\n", formatTime(c.Options.Since))
	}
	if note := SkippedNote(c.Skipped, c.TooLong, c.FirstSkipped); note != "" {
		b.WriteString(note + "\n")
	}
	c.writeRegistries(&b)
	c.writeHub(&b)
	c.writeEvictions(&b)
	_, err := io.WriteString(w, b.String())
	return err
}

func (c *Cache) writeRegistries(b *strings.Builder) {
	if c.Pulls == 0 {
		b.WriteString("\nno pulls recorded (prune-guard records every pull it sees from this version on)\n")
		return
	}
	fmt.Fprintf(b, "\npulls by registry:\n%8s  %6s  %6s  %7s  %9s  %s\n", "pulls", "hit", "miss", "unknown", "hit ratio", "registry")
	var relayed, failed int64
	for _, n := range c.Registries() {
		r := c.registries[n]
		ratio := "-"
		if v, ok := r.HitRatio(); ok {
			ratio = fmt.Sprintf("%.1f%%", 100*v)
		}
		fmt.Fprintf(b, "%8d  %6d  %6d  %7d  %9s  %s\n", r.Pulls, r.Hit, r.Miss, r.Unknown, ratio, Printable(n))
		relayed += r.Relayed
		failed += r.Failed
	}
	if c.full {
		fmt.Fprintf(b, "%8s  (more than %d registries; the rest are counted as %s)\n", "", MaxKeys, Other)
	}
	if failed > 0 {
		fmt.Fprintf(b, "%s failed (each record's pull.error says why)\n", plural(failed, "pull", "pulls"))
	}
	if relayed == 0 {
		return
	}
	fmt.Fprintf(b, "\nlayers of the pulls the proxy relayed:\n%8s  %10s  %12s  %s\n", "reused", "downloaded", "bytes", "registry")
	for _, n := range c.Registries() {
		if r := c.registries[n]; r.Relayed > 0 {
			fmt.Fprintf(b, "%8d  %10d  %12s  %s\n", r.LayersReused, r.LayersDownloaded, bytesText(r.BytesDownloaded), Printable(n))
		}
	}
}

func (c *Cache) writeHub(b *strings.Builder) {
	o := c.Options
	fmt.Fprintf(b, "\nDocker Hub: %s in the 6 hours to %s, against a limit of %d",
		plural(c.HubPulls, "pull", "pulls"), formatTime(o.At), o.HubLimit)
	if o.HubLimit > 0 {
		pct := 100 * float64(c.HubPulls) / float64(o.HubLimit)
		fmt.Fprintf(b, " (%.0f%%)", pct)
		switch {
		case c.HubPulls > o.HubLimit:
			b.WriteString(": OVER THE LIMIT, Docker Hub refuses further pulls (429 Too Many Requests) until the window moves on")
		case pct >= 80:
			b.WriteString(": close to the limit")
		}
	}
	b.WriteString("\n")
}

func (c *Cache) writeEvictions(b *strings.Builder) {
	n := int64(len(c.Evictions)) + c.MoreEvictions
	if n == 0 {
		b.WriteString("\nevicted too early: none (no image reclaim removed was pulled again within 24 hours)\n")
		return
	}
	fmt.Fprintf(b, "\nevicted too early: %s reclaim removed pulled again within 24 hours\n",
		plural(n, "image", "images"))
	advice := c.Advice()
	for i, e := range c.Evictions {
		fmt.Fprintf(b, "  %s removed %s (image %.12s), pulled again %s later\n", formatTime(e.Removed),
			Printable(familiar(e.Reference)), strings.TrimPrefix(e.Image, "sha256:"), short(e.PulledAgain.Sub(e.Removed)))
		a := advice[i]
		minAge := fmt.Sprintf("--min-age %s (it had been unused %s when it was pulled again)", a.MinAge, short(e.PulledAgain.Sub(e.LastUsed)))
		if a.MinAge == "" {
			minAge = "a --min-age more than " + a.RaiseMinAgeBy + " longer than the one in force"
		}
		fmt.Fprintf(b, "      keep it with %s, --protect-image '%s', or --keep-per-repo %d\n", minAge, Printable(a.ProtectImage), a.KeepPerRepo)
	}
	if c.MoreEvictions > 0 {
		fmt.Fprintf(b, "  and %d more\n", c.MoreEvictions)
	}
}

// bytesText prints a size in binary units, as reclaim does: 512 B, 12.0 MiB.
func bytesText(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f, i := float64(n)/unit, 0
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	for ; f >= unit && i < len(units)-1; i++ {
		f /= unit
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

// jsonCache is the --json form.
type jsonCache struct {
	Since         string         `json:"since,omitempty"`
	LinesRead     int64          `json:"lines_read"`
	NotJSON       int64          `json:"not_json"`
	TooLong       int64          `json:"too_long,omitempty"`
	FirstNotJSON  int            `json:"first_not_json_line,omitempty"`
	Pulls         int64          `json:"pulls"`
	First         string         `json:"first,omitempty"`
	Last          string         `json:"last,omitempty"`
	Registries    []jsonRegistry `json:"registries"`
	DockerHub     jsonHub        `json:"docker_hub"`
	Evicted       []jsonEviction `json:"evicted_too_early"`
	MoreEvictions int64          `json:"evicted_too_early_more,omitempty"`
	Truncated     bool           `json:"truncated,omitempty"`
}

type jsonRegistry struct {
	Registry string `json:"registry"`
	RegistryPulls
	HitRatio *float64 `json:"hit_ratio"`
}

type jsonHub struct {
	WindowStart string `json:"window_start"`
	WindowEnd   string `json:"window_end"`
	Pulls       int64  `json:"pulls"`
	Limit       int64  `json:"limit"`
}

type jsonEviction struct {
	Reference   string `json:"reference"`
	Image       string `json:"image"`
	Removed     string `json:"removed"`
	PulledAgain string `json:"pulled_again"`
	LastUsed    string `json:"last_used,omitempty"`
	Why         string `json:"why,omitempty"`
	Change      Advice `json:"change"`
}

func (c *Cache) writeJSON(w io.Writer) error {
	j := jsonCache{Since: jsonTime(c.Options.Since), LinesRead: c.Read, NotJSON: c.Skipped, TooLong: c.TooLong,
		FirstNotJSON: c.FirstSkipped, Pulls: c.Pulls, First: jsonTime(c.First), Last: jsonTime(c.Last),
		Registries: []jsonRegistry{}, Evicted: []jsonEviction{}, MoreEvictions: c.MoreEvictions, Truncated: c.full,
		DockerHub: jsonHub{WindowStart: jsonTime(c.Options.At.Add(-HubWindow)), WindowEnd: jsonTime(c.Options.At),
			Pulls: c.HubPulls, Limit: c.Options.HubLimit}}
	for _, n := range c.Registries() {
		r := jsonRegistry{Registry: n, RegistryPulls: *c.registries[n]}
		if v, ok := r.RegistryPulls.HitRatio(); ok {
			r.HitRatio = &v
		}
		j.Registries = append(j.Registries, r)
	}
	advice := c.Advice()
	for i, e := range c.Evictions {
		j.Evicted = append(j.Evicted, jsonEviction{Reference: e.Reference, Image: e.Image, Removed: jsonTime(e.Removed),
			PulledAgain: jsonTime(e.PulledAgain), LastUsed: jsonTime(e.LastUsed), Why: e.Why, Change: advice[i]})
	}
	b, err := marshal(j)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
