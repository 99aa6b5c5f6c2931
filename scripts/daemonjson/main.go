// Command daemonjson edits /etc/docker/daemon.json for scripts/quickstart.sh,
// so that the script needs neither python3 nor jq on a fresh Debian: Go is
// needed to build prune-guard anyway.
//
//	go run ./scripts/daemonjson FILE authz   # add "prune-guard" to "authorization-plugins"
//	go run ./scripts/daemonjson FILE proxy   # "hosts": [engine socket], "group": "root", no "prune-guard" plugin
//	go run ./scripts/daemonjson FILE mode    # print "proxy" if dockerd is set up for proxy mode, else "authz"
//
// A missing or empty file counts as {}. The other keys, their order and
// their values (numbers included) are kept; the file is rewritten indented,
// and only when it changes. What it replaces is said on standard error.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
)

// engineHost is dockerd's own socket in proxy mode (prune-guard proxy's
// default --docker-host).
const engineHost = "unix:///run/docker/engine.sock"

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: daemonjson FILE authz|proxy|mode")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintf(os.Stderr, "daemonjson: %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func run(path, action string) error {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	cfg, err := parse(old)
	if err != nil {
		return err
	}
	switch action {
	case "mode":
		if cfg.isProxy() {
			fmt.Println("proxy")
		} else {
			fmt.Println("authz")
		}
		return nil
	case "authz":
		if cfg.isProxy() {
			return fmt.Errorf(`"hosts" is [%q]: dockerd is set up for proxy mode; roll that back first (docs/install.md)`, engineHost)
		}
		if err := cfg.addPlugin("prune-guard"); err != nil {
			return err
		}
	case "proxy":
		if err := cfg.setProxy(); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown action %q (authz, proxy or mode)", action)
	}
	out := cfg.marshal()
	if bytes.Equal(out, old) {
		return nil
	}
	return os.WriteFile(path, out, 0o644)
}

// config is a JSON object's members in file order.
type config struct {
	keys   []string
	values map[string]json.RawMessage
}

func parse(b []byte) (*config, error) {
	c := &config{values: map[string]json.RawMessage{}}
	if len(bytes.TrimSpace(b)) == 0 {
		return c, nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil {
		return nil, err
	} else if tok != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		k := tok.(string) // an object's member starts with its name
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("value of %q: %w", k, err)
		}
		if _, dup := c.values[k]; dup {
			// dockerd reads the last one; which one a person meant is unclear.
			return nil, fmt.Errorf("%q is set twice; keep one", k)
		}
		c.keys = append(c.keys, k)
		c.values[k] = v
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err == nil {
		return nil, errors.New("text after the JSON object")
	}
	return c, nil
}

func (c *config) set(k string, v any) {
	b, _ := json.Marshal(v) // strings and lists of strings always marshal
	if _, ok := c.values[k]; !ok {
		c.keys = append(c.keys, k)
	}
	c.values[k] = b
}

func (c *config) del(k string) {
	delete(c.values, k)
	c.keys = slices.DeleteFunc(c.keys, func(x string) bool { return x == k })
}

func (c *config) strings(k string) ([]string, error) {
	raw, ok := c.values[k]
	if !ok {
		return nil, nil
	}
	var l []string
	if err := json.Unmarshal(raw, &l); err != nil {
		return nil, fmt.Errorf("%q is not a list of strings: %s", k, raw)
	}
	return l, nil
}

func (c *config) isProxy() bool {
	hosts, err := c.strings("hosts")
	return err == nil && slices.Equal(hosts, []string{engineHost})
}

func (c *config) addPlugin(name string) error {
	plugins, err := c.strings("authorization-plugins")
	if err != nil {
		return err
	}
	if !slices.Contains(plugins, name) {
		c.set("authorization-plugins", append(plugins, name))
	}
	return nil
}

// setProxy points dockerd at its own socket, root's alone, and takes
// prune-guard out of its authorization plugins: in proxy mode prune-guard
// decides in front of dockerd.
func (c *config) setProxy() error {
	if hosts, err := c.strings("hosts"); err != nil {
		return err
	} else if len(hosts) > 0 && !slices.Equal(hosts, []string{engineHost}) {
		fmt.Fprintf(os.Stderr, "daemonjson: replacing \"hosts\": %s (clients reach dockerd through prune-guard proxy on /var/run/docker.sock)\n", strings.Join(hosts, ", "))
	}
	if g, ok := c.values["group"]; ok && string(g) != `"root"` {
		fmt.Fprintf(os.Stderr, "daemonjson: replacing \"group\": %s\n", g)
	}
	c.set("hosts", []string{engineHost})
	c.set("group", "root")
	plugins, err := c.strings("authorization-plugins")
	if err != nil {
		return err
	}
	if i := slices.Index(plugins, "prune-guard"); i >= 0 {
		plugins = slices.Delete(plugins, i, i+1)
		fmt.Fprintln(os.Stderr, `daemonjson: taking "prune-guard" out of "authorization-plugins" (proxy mode needs no plugin)`)
		if len(plugins) == 0 {
			c.del("authorization-plugins")
		} else {
			c.set("authorization-plugins", plugins)
		}
	}
	return nil
}

func (c *config) marshal() []byte {
	var b bytes.Buffer
	b.WriteString("{")
	for i, k := range c.keys {
		if i > 0 {
			b.WriteString(",")
		}
		name, _ := json.Marshal(k)
		var v bytes.Buffer
		if err := json.Indent(&v, c.values[k], "  ", "  "); err != nil {
			v.Write(c.values[k]) // came from the decoder: valid JSON
		}
		fmt.Fprintf(&b, "\n  %s: %s", name, v.Bytes())
	}
	if len(c.keys) > 0 {
		b.WriteString("\n")
	}
	b.WriteString("}\n")
	return b.Bytes()
}
