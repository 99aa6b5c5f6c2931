package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// In proxy mode prune-guard guards only what comes through its socket. The
// engine's own socket, and any other address dockerd listens on, is a way
// around it: exposureWarnings finds each one a non-root user could use.
// dockerd is found by the peer credentials of a connection to its socket,
// and its listening sockets by its open descriptors, so what is reported is
// what the running daemon does, whatever configured it.

// exposureWarnings returns a warning for every way past the proxy to the
// engine at host (a unix:// address) that a non-root user has.
func exposureWarnings(ctx context.Context, host string) []string {
	path, err := unixPath(host)
	if err != nil {
		return []string{fmt.Sprintf("cannot check how the engine at %s is exposed: %v", host, err)}
	}
	var w []string
	if who := reachableBy(path); who != "" {
		w = append(w, fmt.Sprintf("the engine's own socket %s can be reached by %s: they talk to dockerd past prune-guard; "+
			"make it root-only (dockerd --group root, or a root-only directory; docs/install.md, proxy mode)", path, who))
	}
	pid, err := socketPeer(ctx, path)
	if err != nil {
		return append(w, fmt.Sprintf("cannot tell which process serves %s, so other addresses dockerd listens on are unchecked: %v", path, err))
	}
	others, err := listeningAddrs(pid)
	if err != nil {
		return append(w, fmt.Sprintf("cannot list what dockerd (pid %d) listens on: %v", pid, err))
	}
	for _, a := range others {
		switch {
		case a.network == "tcp":
			w = append(w, fmt.Sprintf("dockerd (pid %d) also listens on TCP %s: clients there reach the engine past prune-guard; "+
				"drop that host from dockerd, or use authz mode for remote clients (docs/install.md)", pid, a.addr))
		case a.addr != path:
			if who := reachableBy(a.addr); who != "" {
				w = append(w, fmt.Sprintf("dockerd (pid %d) also listens on %s, which %s can reach past prune-guard; "+
					"drop that host from dockerd (docs/install.md, proxy mode)", pid, a.addr, who))
			}
		}
	}
	return w
}

// unixPath returns the socket path of a unix:// engine address.
func unixPath(host string) (string, error) {
	u, err := url.Parse(host)
	if err != nil {
		return "", err
	}
	if u.Scheme != "unix" {
		return "", fmt.Errorf("%q is not a unix socket address", host)
	}
	return u.Path, nil
}

// reachableBy says which non-root users may connect to the unix socket at
// path ("every local user", "members of group G"), or "" if none may:
// connecting takes write permission on the socket and search permission on
// every directory above it. (A socket owned by a user other than root is
// not dockerd's way and is not weighed.) A symbolic link is followed:
// the directories that count are those above the socket itself.
func reachableBy(path string) string {
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	mode, gid, ok := statPerm(path)
	if !ok {
		return ""
	}
	others := mode&0o002 != 0
	group := gid != 0 && mode&0o020 != 0
	for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
		dmode, dgid, ok := statPerm(dir)
		if !ok {
			return ""
		}
		others = others && dmode&0o001 != 0
		group = group && (dmode&0o001 != 0 || dgid == gid && dmode&0o010 != 0)
		if dir == "/" || dir == "." {
			break
		}
	}
	switch {
	case others:
		return "every local user"
	case group:
		name := strconv.FormatUint(uint64(gid), 10)
		if g, err := user.LookupGroupId(name); err == nil {
			name = g.Name
		}
		return "members of group " + name
	}
	return ""
}

// statPerm returns a file's permission bits and group.
func statPerm(path string) (os.FileMode, uint32, bool) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, 0, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return fi.Mode().Perm(), st.Gid, true
}

// socketPeer returns the process ID serving the unix socket at path, from
// the peer credentials of a connection to it.
func socketPeer(ctx context.Context, path string) (int, error) {
	d := net.Dialer{Timeout: 2 * time.Second}
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, credErr
	}
	return int(cred.Pid), nil
}

// listenAddr is an address a process listens on.
type listenAddr struct {
	network string // "tcp" or "unix"
	addr    string // host:port, or a socket path
}

// listeningAddrs returns the TCP and unix addresses process pid listens
// on, matching its socket descriptors against its network namespace's
// tables.
func listeningAddrs(pid int) ([]listenAddr, error) {
	inodes, err := socketInodes(pid)
	if err != nil {
		return nil, err
	}
	var out []listenAddr
	for _, table := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			continue // no IPv6, say
		}
		for _, e := range parseProcNetTCP(data) {
			if inodes[e.inode] {
				out = append(out, listenAddr{"tcp", e.addr})
			}
		}
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/unix", pid))
	if err != nil {
		return nil, err
	}
	for _, e := range parseProcNetUnix(data) {
		if inodes[e.inode] {
			out = append(out, listenAddr{"unix", e.addr})
		}
	}
	return out, nil
}

// socketInodes returns the inodes of process pid's socket descriptors.
func socketInodes(pid int) (map[uint64]bool, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	inodes := map[uint64]bool{}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if s, ok := strings.CutPrefix(target, "socket:["); ok {
			if n, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64); err == nil {
				inodes[n] = true
			}
		}
	}
	return inodes, nil
}

// procEntry is a listening socket of a /proc/net table.
type procEntry struct {
	inode uint64
	addr  string
}

// parseProcNetTCP returns the listening sockets of /proc/net/tcp or tcp6:
// state 0A, local address as hex IP (in the kernel's byte order, 32-bit
// words) and hex port.
func parseProcNetTCP(data []byte) []procEntry {
	var out []procEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	for first := true; sc.Scan(); first = false {
		f := strings.Fields(sc.Text())
		if first || len(f) < 10 || f[3] != "0A" {
			continue
		}
		ipPort := strings.Split(f[1], ":")
		inode, err := strconv.ParseUint(f[9], 10, 64)
		if len(ipPort) != 2 || err != nil {
			continue
		}
		ip, err1 := hex.DecodeString(ipPort[0])
		port, err2 := strconv.ParseUint(ipPort[1], 16, 16)
		if err1 != nil || err2 != nil || len(ip)%4 != 0 {
			continue
		}
		// Each 32-bit word is in host (little-endian) order.
		for i := 0; i < len(ip); i += 4 {
			ip[i], ip[i+1], ip[i+2], ip[i+3] = ip[i+3], ip[i+2], ip[i+1], ip[i]
		}
		out = append(out, procEntry{inode, net.JoinHostPort(net.IP(ip).String(), strconv.FormatUint(port, 10))})
	}
	return out
}

// parseProcNetUnix returns the listening, named sockets of /proc/net/unix:
// flags with __SO_ACCEPTCON (0x10000), and a path.
func parseProcNetUnix(data []byte) []procEntry {
	const acceptCon = 0x10000
	var out []procEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	for first := true; sc.Scan(); first = false {
		f := strings.Fields(sc.Text())
		if first || len(f) < 8 || !strings.HasPrefix(f[7], "/") {
			continue
		}
		flags, err1 := strconv.ParseUint(f[3], 16, 32)
		inode, err2 := strconv.ParseUint(f[6], 10, 64)
		if err1 != nil || err2 != nil || flags&acceptCon == 0 {
			continue
		}
		out = append(out, procEntry{inode, f[7]})
	}
	return out
}
