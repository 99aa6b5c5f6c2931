package enginetest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// deathSignal makes a child receive sig when the test process dies, so that
// a test binary killed by its timeout does not leave it running.
func deathSignal(sig syscall.Signal) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: sig}
}

// killLeftovers SIGKILLs processes that belong to a stopped engine: those
// whose command line points into its exec or data root (containerd, shims)
// and those in the cgroup of one of its containers, which are the IDs given
// plus those the data root still lists (a dockerd that died cannot be asked).
// It then removes the containers' empty cgroups, and returns a description
// of each process killed. A healthy shutdown leaves nothing to do.
func killLeftovers(root string, containerIDs []string) []string {
	ids := append([]string(nil), containerIDs...)
	if ents, err := os.ReadDir(filepath.Join(root, "data", "containers")); err == nil {
		for _, ent := range ents {
			ids = append(ids, ent.Name())
		}
	}
	markers := []string{filepath.Join(root, "exec") + "/", filepath.Join(root, "data") + "/"}
	self := os.Getpid()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return []string{fmt.Sprintf("cannot scan /proc: %v", err)}
	}
	var killed []string
	var pids []int
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == self {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil {
			continue // gone already
		}
		cg, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "cgroup"))
		if !ownedBy(cmdline, cg, markers, ids) {
			continue
		}
		cmd := strings.TrimSpace(string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			killed = append(killed, fmt.Sprintf("pid %d (%s): SIGKILL failed: %v", pid, cmd, err))
			continue
		}
		pids = append(pids, pid)
		killed = append(killed, fmt.Sprintf("pid %d (%s)", pid, cmd))
	}
	// Wait, bounded, for them to be gone, so that their mounts and cgroups
	// can go too.
	deadline := time.Now().Add(killTimeout)
	for _, pid := range pids {
		for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
			time.Sleep(pollInterval)
		}
	}
	removeCgroups(ids)
	return killed
}

// removeCgroups removes the (empty) cgroups of containers whose dockerd
// could not, under the cgroupfs and systemd drivers' default parents, in
// cgroup v1 and v2 layouts. Errors are ignored: what is left is empty and
// harmless.
func removeCgroups(ids []string) {
	for _, id := range ids {
		if len(id) != 64 || strings.Trim(id, "0123456789abcdef") != "" {
			continue // not a container ID: never glob with it
		}
		for _, pattern := range []string{
			"/sys/fs/cgroup/*/docker/" + id,
			"/sys/fs/cgroup/docker/" + id,
			"/sys/fs/cgroup/*/system.slice/docker-" + id + ".scope",
			"/sys/fs/cgroup/system.slice/docker-" + id + ".scope",
		} {
			dirs, _ := filepath.Glob(pattern)
			for _, d := range dirs {
				_ = syscall.Rmdir(d)
			}
		}
	}
}

func ownedBy(cmdline, cgroup []byte, markers, containerIDs []string) bool {
	for _, m := range markers {
		if bytes.Contains(cmdline, []byte(m)) {
			return true
		}
	}
	for _, id := range containerIDs {
		if id != "" && bytes.Contains(cgroup, []byte(id)) {
			return true
		}
	}
	return false
}

// unmountUnder lazily unmounts every mount point at or below root, deepest
// first: overlay layers, shm, network namespaces that a dockerd which did not
// shut down cleanly left behind, and the data root's private bind mount.
func unmountUnder(root string) []error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return []error{fmt.Errorf("reading mountinfo: %w", err)}
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == root || strings.HasPrefix(mp, root+"/") {
			points = append(points, mp)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, mp := range points {
		err := syscall.Unmount(mp, syscall.MNT_DETACH)
		if err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", mp, err))
		}
	}
	return errs
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, etc.).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var out strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				out.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		out.WriteByte(s[i])
	}
	return out.String()
}
