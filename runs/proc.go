package runs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/prune-guard/prune-guard/rules"
)

// maxEnviron bounds what is read of one process's environment. CI jobs carry
// large environments (hundreds of CI_ variables), so the bound is generous;
// it exists so that one process with a huge environment cannot make every
// decision slow.
const maxEnviron = 256 << 10

var environBufs = sync.Pool{New: func() any { b := make([]byte, maxEnviron); return &b }}

// procView is what prune-guard can see of the host's processes.
type procView struct {
	root    string // the proc filesystem, "/proc" outside tests
	self    string // prune-guard's own pid as root names it
	ns      string // prune-guard's PID namespace (the ns/pid link), "" if unreadable
	visible bool
	why     string // why the host's processes are not visible
}

// viewProcs finds prune-guard itself under root.
func viewProcs(root string) procView {
	v := procView{root: root}
	self, err := os.Readlink(filepath.Join(root, "self"))
	if err != nil {
		v.why = fmt.Sprintf("cannot read %s: %v", filepath.Join(root, "self"), err)
		return v
	}
	v.self = self
	if self == "1" {
		// A managed plugin without pidhost, or a container without
		// --pid=host: the namespace holds prune-guard alone, and a job
		// process on the host cannot be seen.
		v.why = "prune-guard is PID 1 of its own PID namespace (a managed plugin without pidhost, or a container without --pid=host), so it cannot see the host's processes"
		return v
	}
	// Unreadable, the namespace check is skipped: counting a container's
	// process as a host process only holds more back.
	v.ns, _ = os.Readlink(filepath.Join(root, "self", "ns", "pid"))
	v.visible = true
	return v
}

// scanProcs lists the processes of prune-guard's PID namespace (but not
// prune-guard itself) and returns those d recognises. Processes come and go
// while the directory is read: one that vanishes, or whose entry cannot be
// read, is skipped.
func (v procView) scanProcs(d rules.Detection) ([]rules.Object, error) {
	dir, err := os.Open(v.root)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", v.root, err)
	}
	names, err := dir.Readdirnames(-1)
	dir.Close()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", v.root, err)
	}
	keys := d.EnvKeys()
	var buf *[]byte
	if len(keys) > 0 {
		buf = environBufs.Get().(*[]byte)
		defer environBufs.Put(buf)
	}
	var out []rules.Object
	for _, pid := range names {
		if !isPID(pid) || pid == v.self {
			continue
		}
		o, ok := v.readProc(pid, keys, buf)
		if !ok {
			continue
		}
		if _, ok := d.Match(o); ok {
			// Read for the record only: no detector matches on it, and
			// every syscall counts on a host with thousands of processes.
			o.Exe, _ = os.Readlink(v.root + "/" + pid + "/exe")
			out = append(out, o)
		}
	}
	return out, nil
}

// readProc reads what detectors look at of one process; ok is false when
// the process is gone, unreadable, or in another PID namespace.
func (v procView) readProc(pid string, keys []string, buf *[]byte) (rules.Object, bool) {
	dir := v.root + "/" + pid + "/"
	if v.ns != "" {
		// Container processes are seen through their containers.
		ns, err := os.Readlink(dir + "ns/pid")
		if err != nil || ns != v.ns {
			return rules.Object{}, false
		}
	}
	comm, err := readSmall(dir + "comm")
	if err != nil {
		return rules.Object{}, false
	}
	o := rules.Object{Kind: rules.Process, ID: pid, Name: strings.TrimSuffix(comm, "\n")}
	if len(keys) > 0 {
		// Unreadable (another user's process without CAP_SYS_PTRACE):
		// detectors by name still see it.
		if n, err := readInto(dir+"environ", *buf); err == nil {
			o.Env = parseEnviron((*buf)[:n], keys)
		}
	}
	return o, true
}

// readSmall reads a short /proc file such as comm (at most 64 bytes are
// kept: comm is 16).
func readSmall(path string) (string, error) {
	var b [64]byte
	n, err := readInto(path, b[:])
	if err != nil {
		return "", err
	}
	return string(b[:n]), nil
}

// readInto reads up to len(buf) bytes of path.
func readInto(path string, buf []byte) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := io.ReadFull(f, buf)
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		err = nil
	}
	return n, err
}

// parseEnviron extracts keys from a NUL-separated environment as
// /proc/PID/environ holds it. A trailing variable without its NUL may have
// been cut by the read bound and is ignored; so is anything malformed.
func parseEnviron(b []byte, keys []string) map[string]string {
	var env map[string]string
	for len(b) > 0 {
		i := bytes.IndexByte(b, 0)
		if i < 0 {
			break
		}
		kv := b[:i]
		b = b[i+1:]
		eq := bytes.IndexByte(kv, '=')
		if eq <= 0 {
			continue
		}
		for _, k := range keys {
			if string(kv[:eq]) == k {
				if env == nil {
					env = make(map[string]string, len(keys))
				}
				env[k] = string(kv[eq+1:])
				break
			}
		}
	}
	return env
}

func isPID(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if name[i] < '0' || name[i] > '9' {
			return false
		}
	}
	return true
}
