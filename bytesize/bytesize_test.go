package bytesize

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
	}{
		{"0", 0},
		{"1048576", 1 << 20},
		{"20GB", 20_000_000_000},
		{"20 GB", 20_000_000_000},
		{"20gb", 20_000_000_000},
		{"20G", 20_000_000_000},
		{"20GiB", 20 << 30},
		{"20 GiB", 20 << 30},
		{"20gib", 20 << 30},
		{"512MiB", 512 << 20},
		{"512MB", 512_000_000},
		{"1.5TB", 1_500_000_000_000},
		{"1.5TiB", 3 << 39},
		{"100kB", 100_000},
		{"100KiB", 100 << 10},
		{"  8GiB ", 8 << 30},
		{"1024PiB", 1 << 60},
	} {
		got, err := Parse(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("Parse(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	for _, in := range []string{"", " ", "-1", "-1GB", "GB", "20XB", "20GBB", "20 G B", "1025PiB", "1e30GB", "9999999999999999999", "NaN", "Inf", "20GiBs", "twenty"} {
		if n, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) = %d; want an error", in, n)
		}
	}
	if _, err := Parse("-5GB"); err == nil || !strings.Contains(err.Error(), "-5GB") {
		t.Errorf("the error should quote the input: %v", err)
	}
}

func TestFormatRoundTrips(t *testing.T) {
	for _, n := range []int64{0, 1, 999, 1000, 1024, 1536 << 10, 20 << 30, 20_000_000_000, 3 << 39, Max, 123456789} {
		s := Format(n)
		back, err := Parse(s)
		if err != nil || back != n {
			t.Errorf("Format(%d) = %q, parsed back as %d, %v", n, s, back, err)
		}
	}
	if s := Format(20 << 30); s != "20GiB" {
		t.Errorf("Format(20GiB) = %q", s)
	}
	if s := Format(20_000_000_000); s != "20GB" {
		t.Errorf("Format(20GB) = %q", s)
	}
}

func TestValueIsAFlag(t *testing.T) {
	var n int64 = 5 << 30
	v := NewValue(&n)
	if v.String() != "5GiB" || v.Type() != "size" {
		t.Errorf("value %q of type %q", v.String(), v.Type())
	}
	if err := v.Set("20GB"); err != nil || n != 20_000_000_000 {
		t.Errorf("Set(20GB): %d, %v", n, err)
	}
	if err := v.Set("lots"); err == nil || n != 20_000_000_000 {
		t.Errorf("Set(lots) changed the value to %d or did not fail: %v", n, err)
	}
}

// FuzzParse holds Parse to its promises whatever the input: no panic, a
// size within [0, Max] or an error, and Format of the result read back
// exactly.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"20GB", "20GiB", "1.5TB", "0", "-1", "1e30GB", "9223372036854775807", "1 kib", "0x10", "1_000"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := Parse(s)
		if err != nil {
			return
		}
		if n < 0 || n > Max {
			t.Fatalf("Parse(%q) = %d, outside [0, Max]", s, n)
		}
		back, err := Parse(Format(n))
		if err != nil || back != n {
			t.Fatalf("Parse(%q) = %d; Format = %q reads back as %d, %v", s, n, Format(n), back, err)
		}
	})
}
