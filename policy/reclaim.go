package policy

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/prune-guard/prune-guard/bytesize"
)

// ReclaimSettings are "prune-guard reclaim"'s settings in the policy file
// (its reclaim section); reclaim's flags and their environment variables
// replace them one by one. The plugin reads the file too and ignores them.
type ReclaimSettings struct {
	// High, Low and Critical are usage percentages: act at High, free to
	// Low, act during CI jobs at Critical (0: never).
	High, Low, Critical float64
	// MinAge keeps images seen or used within it; MaxUnused (0: off)
	// removes images unused for longer even without pressure.
	MinAge, MaxUnused time.Duration
	// MinFree and TargetFree are byte targets (0: off); MinFreeInodes an
	// inode floor (0: off).
	MinFree, TargetFree int64
	MinFreeInodes       uint64
	// KeepPerRepo keeps each repository's N most recently used tags (0:
	// off).
	KeepPerRepo int
	// BuildCacheMax is BuildKit's cache budget in bytes (0: off).
	BuildCacheMax int64
}

// DefaultReclaim are reclaim's built-in settings.
func DefaultReclaim() ReclaimSettings {
	return ReclaimSettings{High: 85, Low: 80, Critical: 95, MinAge: time.Hour}
}

// Validate checks the settings that need no other: ranges and order. The
// reclaimer checks them all again when it starts.
func (s ReclaimSettings) Validate() error {
	switch {
	case !(s.Low >= 0 && s.Low < s.High && s.High <= 100):
		return fmt.Errorf("reclaim: want 0 <= low < high <= 100, have low %g and high %g", s.Low, s.High)
	case s.TargetFree > 0 && s.TargetFree < s.MinFree:
		return fmt.Errorf("reclaim.target-free %s is below min-free %s", bytesize.Format(s.TargetFree), bytesize.Format(s.MinFree))
	case s.MaxUnused > 0 && s.MaxUnused < s.MinAge:
		return fmt.Errorf("reclaim.max-unused %s is shorter than min-age %s: images that young are never removed", s.MaxUnused, s.MinAge)
	}
	return nil
}

// reclaim parses the reclaim section over s.
func (p *parser) reclaim(n *yaml.Node, s *ReclaimSettings) {
	percent := func(dst *float64, key string) func(*yaml.Node) {
		return func(n *yaml.Node) {
			if v, ok := p.scalar(n, "reclaim."+key); ok {
				f, err := strconv.ParseFloat(strings.TrimSuffix(v, "%"), 64)
				if err != nil || f < 0 || f > 100 {
					p.errorf(n, "reclaim.%s %q: want a percentage from 0 to 100", key, v)
				}
				*dst = f
			}
		}
	}
	duration := func(dst *time.Duration, key string) func(*yaml.Node) {
		return func(n *yaml.Node) {
			if v, ok := p.scalar(n, "reclaim."+key); ok {
				d, err := time.ParseDuration(v)
				if err != nil || d < 0 {
					p.errorf(n, "reclaim.%s %q: want a duration such as 1h or 90m (0 turns it off)", key, v)
				}
				*dst = d
			}
		}
	}
	size := func(dst *int64, key string) func(*yaml.Node) {
		return func(n *yaml.Node) {
			if v, ok := p.scalar(n, "reclaim."+key); ok {
				b, err := bytesize.Parse(v)
				p.check(n, err)
				*dst = b
			}
		}
	}
	count := func(key string, set func(uint64)) func(*yaml.Node) {
		return func(n *yaml.Node) {
			if v, ok := p.scalar(n, "reclaim."+key); ok {
				c, err := strconv.ParseUint(v, 10, 31)
				if err != nil {
					p.errorf(n, "reclaim.%s %q: want a whole number (0 turns it off)", key, v)
				}
				set(c)
			}
		}
	}
	p.mapping(n, "reclaim", map[string]func(*yaml.Node){
		"high":            percent(&s.High, "high"),
		"low":             percent(&s.Low, "low"),
		"critical":        percent(&s.Critical, "critical"),
		"min-age":         duration(&s.MinAge, "min-age"),
		"max-unused":      duration(&s.MaxUnused, "max-unused"),
		"min-free":        size(&s.MinFree, "min-free"),
		"target-free":     size(&s.TargetFree, "target-free"),
		"min-free-inodes": count("min-free-inodes", func(c uint64) { s.MinFreeInodes = c }),
		"keep-per-repo":   count("keep-per-repo", func(c uint64) { s.KeepPerRepo = int(c) }),
		"build-cache-max": size(&s.BuildCacheMax, "build-cache-max"),
	})
}

// renderReclaim writes the reclaim section, every setting shown.
func renderReclaim(b *strings.Builder, s ReclaimSettings) {
	b.WriteString("reclaim:                         # 'prune-guard reclaim'; its flags replace these one by one\n")
	for _, l := range [][3]string{
		{"high", trimPercent(s.High), "act when the data root's filesystem is this many percent used"},
		{"low", trimPercent(s.Low), "once acting, free until this many percent used (and the targets below)"},
		{"critical", trimPercent(s.Critical), "act even while CI jobs hold image deletes, sparing their images; 0: never"},
		{"min-age", s.MinAge.String(), "never remove an image first seen, pulled, tagged or used this recently"},
		{"max-unused", s.MaxUnused.String(), "also remove images unused this long, without pressure; 0s: off"},
		{"min-free", bytesize.Format(s.MinFree), "act when less than this is free (20GB is SI, 20GiB binary); 0: off"},
		{"target-free", bytesize.Format(s.TargetFree), "once acting, free until at least this much is free (0: min-free)"},
		{"min-free-inodes", strconv.FormatUint(s.MinFreeInodes, 10), "act when fewer inodes are free, and free until this many are; 0: off"},
		{"keep-per-repo", strconv.Itoa(s.KeepPerRepo), "never remove a repository's N most recently used tags; 0: off"},
		{"build-cache-max", bytesize.Format(s.BuildCacheMax), "keep BuildKit's cache under this on every pass (budgeted, never --all); 0: off"},
	} {
		fmt.Fprintf(b, "%-34s # %s\n", "  "+l[0]+": "+l[1], l[2])
	}
}

func trimPercent(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }
