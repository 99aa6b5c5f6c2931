// Package bytesize reads and writes sizes as operators write them: "20GB"
// (SI, 20×10⁹ bytes, as docuum and disk vendors count), "20GiB" (20×2³⁰),
// "512MiB", "1.5TB", "20 GB" or a plain number of bytes. The units are
// docker/go-units': FromHumanSize for SI units and RAMInBytes for binary
// ones, chosen by the "i" the operator wrote, since go-units alone reads
// "GiB" as SI (FromHumanSize) or "GB" as binary (RAMInBytes, the docker
// CLI's --keep-storage). It is a leaf: it imports nothing of prune-guard's.
package bytesize

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	units "github.com/docker/go-units"
)

// Max is the largest size Parse accepts: 1 EiB, far beyond any disk, and
// far from where go-units' float arithmetic stops being exact or an int64
// overflows.
const Max int64 = 1 << 60

// Parse reads a size. Units are case-blind; the B is optional ("20G" is
// 20GB); a decimal fraction is allowed ("1.5TB"); fractions of a byte are
// dropped. Negative sizes, and sizes above Max, are errors.
func Parse(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, errors.New("empty size; write e.g. 20GB, 20GiB or 0")
	}
	parse := units.FromHumanSize
	if strings.ContainsAny(t, "iI") {
		parse = units.RAMInBytes
	}
	n, err := parse(t)
	switch {
	case err != nil:
		return 0, fmt.Errorf("size %q: %v (write e.g. 20GB, 20GiB, 512MiB or a number of bytes)", s, err)
	case n < 0 || n > Max:
		// go-units converts an overflowing float to int64 as the
		// platform does: negative on amd64, the maximum on arm64.
		return 0, fmt.Errorf("size %q is out of range (at most 1EiB)", s)
	}
	return n, nil
}

// Format writes n so that Parse reads it back exactly: in the largest
// binary or SI unit that divides it ("20GiB", "20GB", "1536KiB"), or in
// bytes.
func Format(n int64) string {
	if n == 0 {
		return "0"
	}
	type unit struct {
		size int64
		name string
	}
	for _, u := range []unit{
		{units.PiB, "PiB"}, {units.PB, "PB"}, {units.TiB, "TiB"}, {units.TB, "TB"}, {units.GiB, "GiB"},
		{units.GB, "GB"}, {units.MiB, "MiB"}, {units.MB, "MB"}, {units.KiB, "KiB"}, {units.KB, "kB"},
	} {
		if n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}

// Human writes n for people, in binary units to one decimal: "18.6 GiB".
// Parse reads it back only approximately.
func Human(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	f, i := float64(n), 0
	names := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	for f /= unit; (f >= unit || f <= -unit) && i < len(names)-1; i++ {
		f /= unit
	}
	return fmt.Sprintf("%.1f %s", f, names[i])
}

// Value is a flag value (pflag.Value) holding a size in bytes.
type Value struct{ p *int64 }

// NewValue returns a flag value that stores into p, which holds the
// default.
func NewValue(p *int64) *Value { return &Value{p: p} }

func (v *Value) String() string {
	if v == nil || v.p == nil {
		return "0"
	}
	return Format(*v.p)
}

// Set parses a size.
func (v *Value) Set(s string) error {
	n, err := Parse(s)
	if err != nil {
		return err
	}
	*v.p = n
	return nil
}

// Type names the value in --help.
func (v *Value) Type() string { return "size" }
