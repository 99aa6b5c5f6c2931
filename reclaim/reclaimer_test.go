package reclaim

import "testing"

func TestSameRepoDigestKeepsTheKeptTagsRepository(t *testing.T) {
	const dgst = "@sha256:ded212f7f37e4e67d7926125cfc0939e3fb8a411057ee2e224b16208d43bb74b"
	for _, tc := range []struct {
		keep, ref string
		want      bool
	}{
		{"pg-rc-multi:1", "pg-rc-multi" + dgst, true},
		{"pg-rc-multi:1", "docker.io/library/pg-rc-multi" + dgst, true},
		{"pg-rc-multi:1", "pg-rc-alias/multi" + dgst, false},
		{"pg-rc-multi:1", "pg-rc-multi:2", false},
		{"pg-rc-multi:1", "not a reference", false},
	} {
		if got := sameRepoDigest(tc.keep, tc.ref); got != tc.want {
			t.Errorf("sameRepoDigest(%q, %q) = %v; want %v", tc.keep, tc.ref, got, tc.want)
		}
	}
}
