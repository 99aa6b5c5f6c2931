package reclaim

import (
	"fmt"
	"math"
	"strings"

	"github.com/prune-guard/prune-guard/bytesize"
)

// When reclaim acts and when it is done, from the operator's marks: the
// percent marks (--high, --low, --critical) and the byte and inode targets
// beside them (--min-free, --target-free, --min-free-inodes).

// trigger says why acting is due at usage u, or "" when nothing is: usage
// at or above High, fewer bytes available than MinFree, or fewer inodes
// free than MinFreeInodes. An unmeasured filesystem triggers nothing.
func (o Options) trigger(u Usage) string {
	if u.Total == 0 {
		return ""
	}
	var why []string
	if pct := u.Percent(); pct >= o.High {
		why = append(why, fmt.Sprintf("%.1f%% used, at or above --high %g%%", pct, o.High))
	}
	if o.MinFree > 0 && u.Avail < uint64(o.MinFree) {
		why = append(why, fmt.Sprintf("%s available, under --min-free %s", bytesize.Human(int64(u.Avail)), bytesize.Format(o.MinFree)))
	}
	if o.inodesCount(u) && u.FreeInodes < o.MinFreeInodes {
		why = append(why, fmt.Sprintf("%d inodes free, under --min-free-inodes %d", u.FreeInodes, o.MinFreeInodes))
	}
	return strings.Join(why, "; ")
}

// inodesCount reports whether the inode target applies to u: it is set, and
// the filesystem counts inodes (btrfs, for one, reports none).
func (o Options) inodesCount(u Usage) bool { return o.MinFreeInodes > 0 && u.Inodes > 0 }

// TargetFreeBytes is the free space a pass frees up to: TargetFree, or
// MinFree when no TargetFree is set.
func (o Options) TargetFreeBytes() int64 { return max(o.TargetFree, o.MinFree) }

// Satisfied reports whether u meets every target a pass frees up to: usage
// at or below Low, at least TargetFreeBytes available, at least
// MinFreeInodes inodes free.
func (o Options) Satisfied(u Usage) bool {
	if u.Percent() > o.Low {
		return false
	}
	if t := o.TargetFreeBytes(); t > 0 && u.Avail < uint64(t) {
		return false
	}
	return !o.inodesCount(u) || u.FreeInodes >= o.MinFreeInodes
}

// unmet says which targets u does not meet yet: "still above low 80%", and
// the byte and inode targets short of theirs.
func (o Options) unmet(u Usage) string {
	var why []string
	if u.Percent() > o.Low {
		why = append(why, fmt.Sprintf("still above low %g%%", o.Low))
	}
	if t := o.TargetFreeBytes(); t > 0 && u.Avail < uint64(t) {
		why = append(why, fmt.Sprintf("%s available, under the target %s", bytesize.Human(int64(u.Avail)), bytesize.Format(t)))
	}
	if o.inodesCount(u) && u.FreeInodes < o.MinFreeInodes {
		why = append(why, fmt.Sprintf("%d inodes free, under --min-free-inodes %d", u.FreeInodes, o.MinFreeInodes))
	}
	return strings.Join(why, "; ")
}

// need is the bytes to free from u to bring usage to Low and the free
// space to TargetFreeBytes. Inodes have no byte figure: a pass short of
// inodes acts by measurement alone.
func (o Options) need(u Usage) int64 {
	want := uint64(math.Ceil(float64(u.Total) * (100 - o.Low) / 100))
	if t := o.TargetFreeBytes(); t > 0 {
		want = max(want, uint64(t))
	}
	if want > u.Avail {
		return int64(want - u.Avail)
	}
	return 0
}

// critical reports whether u is at or above the critical mark (0: off).
func (o Options) critical(u Usage) bool {
	return o.Critical > 0 && u.Total > 0 && u.Percent() >= o.Critical
}

// targetsText describes the marks for a report's header.
func (o Options) targetsText() string {
	s := fmt.Sprintf("high %g%%, low %g%%", o.High, o.Low)
	if o.Critical > 0 {
		s += fmt.Sprintf(", critical %g%%", o.Critical)
	}
	if o.MinFree > 0 {
		s += ", min-free " + bytesize.Format(o.MinFree)
	}
	if t := o.TargetFreeBytes(); t > 0 && t != o.MinFree {
		s += ", target-free " + bytesize.Format(t)
	}
	if o.MinFreeInodes > 0 {
		s += fmt.Sprintf(", min-free-inodes %d", o.MinFreeInodes)
	}
	return s
}

// Validate checks the marks against each other.
func (o Options) Validate() error {
	switch {
	case !(o.Low >= 0 && o.Low < o.High && o.High <= 100):
		return fmt.Errorf("want 0 <= low < high <= 100, have low %g and high %g", o.Low, o.High)
	case !(o.Critical >= 0 && o.Critical <= 100):
		// Below High it is no error: every pass then acts during jobs.
		return fmt.Errorf("critical %g: want a percentage up to 100, or 0 to never act while a CI job holds image deletes", o.Critical)
	case o.MinFree < 0 || o.TargetFree < 0:
		return fmt.Errorf("byte targets must not be negative")
	case o.TargetFree > 0 && o.TargetFree < o.MinFree:
		return fmt.Errorf("target-free %s is below min-free %s: a pass would stop before it leaves the state that started it",
			bytesize.Format(o.TargetFree), bytesize.Format(o.MinFree))
	case o.KeepPerRepo < 0:
		return fmt.Errorf("keep-per-repo %d: want 0 (off) or more", o.KeepPerRepo)
	case o.MinAge < 0:
		return fmt.Errorf("the minimum age must not be negative")
	case o.MaxUnused < 0:
		return fmt.Errorf("the maximum unused time must not be negative")
	case o.MaxUnused > 0 && o.MaxUnused < o.MinAge:
		return fmt.Errorf("the maximum unused time %s is shorter than the minimum age %s: images that young are never removed", o.MaxUnused, o.MinAge)
	}
	return o.Protect.Validate()
}
