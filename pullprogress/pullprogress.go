// Package pullprogress reads the progress stream of an image pull (the body
// of POST /images/create) as the engine writes it, and counts the layers the
// pull reused and downloaded and the bytes it downloaded.
//
// The stream is JSON messages, one a line (moby pkg/streamformatter: each
// ends "\r\n"): {"status": …, "id": …, "progressDetail": {"current": …,
// "total": …}}, and {"errorDetail": {"message": …}, "error": …} when the
// pull fails. Per layer (id is its short digest) the engines at the tags
// prune-guard is tested on write:
//
// Graph drivers (moby distribution/xfer/download.go and
// distribution/pull_v2.go at v20.10.24, v26.1.5, v28.5.2; the same files
// under daemon/internal/distribution at v2.0.0-beta.24):
//
//   - nothing at all per layer when the image (its config) is already
//     local (pullSchema2Layers: "no need to pull anything");
//   - "Already exists": the layer is in the layer store; nothing downloaded;
//   - "Pulling fs layer", "Waiting", "Downloading" {current, total} (the
//     progress reader reports at least its last read), "Verifying
//     Checksum", "Download complete", "Extracting" {…}, "Pull complete".
//
// The containerd image store (daemon/containerd/progress.go at v28.5.2 and
// v2.0.0-beta.24), which polls the content store every 100 ms:
//
//   - nothing at all per layer when the image was wholly local (hideLayers),
//     nor for a layer already unpacked under another image: containerd
//     does not fetch it (core/unpack/unpacker.go, "already exists skip
//     fetch blob", containerd v2.1.4 and v2.3.5), so moby never hears of it;
//   - "Already exists": the blob was in the content store, not unpacked;
//   - "Downloading" {current: offset, total} while a poll finds it partly
//     written (containerd writes a blob 1 MiB at a time: content.Copy's
//     copyWithBuffer), "Download complete" (no counts) once it is there,
//     then "Extracting" and "Pull complete" once unpacked: for reused
//     layers too, so "Pull complete" alone does not mean downloaded.
//
// So a layer is reused when it said "Already exists", and downloaded when
// it said "Download complete" (or "Pull complete" without "Already
// exists"). Its bytes are its total once its download completed, otherwise
// the largest current it reported. On the containerd store a layer under
// 1 MiB, or one fetched between two polls, reports no size, so bytes are a
// lower bound there, and layers reused are rarely seen.
//
// Work is bounded per byte (a line is scanned once and decoded once) and
// memory is bounded whatever the stream holds: lines longer than MaxLine
// and layers beyond MaxLayers are passed over.
package pullprogress

import (
	"bytes"
	"encoding/json"
)

const (
	// MaxLine bounds one message. The engine's are well under 1 KiB; a
	// longer line is passed over, not held.
	MaxLine = 64 << 10
	// MaxLayers bounds the layers followed. An image has at most a few
	// hundred (overlay2 stacks 128); a "pull -a" of many tags shares
	// most of them.
	MaxLayers = 4096
	// maxID bounds a layer's id as a map key.
	maxID = 128
	// maxError bounds the error kept.
	maxError = 1024
)

// Result is what a pull's progress stream reported.
type Result struct {
	LayersReused     int64
	LayersDownloaded int64
	// BytesDownloaded sums, over the layers that reported a size, the
	// bytes they downloaded.
	BytesDownloaded int64
	// Error is the engine's message when the stream reported a failure.
	Error string
}

// Parser follows one pull's progress stream. Its zero value is ready; it is
// not safe for concurrent use.
type Parser struct {
	line     []byte
	skipping bool // inside a line longer than MaxLine
	layers   map[string]*layer
	err      string
}

type layer struct {
	exists, downloaded, pulled bool
	current, total             int64
}

// Write feeds the next bytes of the stream, in any split. It never fails.
func (p *Parser) Write(b []byte) (int, error) {
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			p.hold(b)
			break
		}
		p.hold(b[:i])
		if !p.skipping {
			p.message(p.line)
		}
		p.line, p.skipping = p.line[:0], false
		b = b[i+1:]
	}
	return n, nil
}

// hold appends part of a line, unless the line is already too long.
func (p *Parser) hold(b []byte) {
	if p.skipping {
		return
	}
	if len(p.line)+len(b) > MaxLine {
		p.line, p.skipping = p.line[:0], true
		return
	}
	p.line = append(p.line, b...)
}

// wire is one message, with only the fields counted.
type wire struct {
	Status   string `json:"status"`
	ID       string `json:"id"`
	Progress *struct {
		Current int64 `json:"current"`
		Total   int64 `json:"total"`
	} `json:"progressDetail"`
	ErrorDetail *struct {
		Message string `json:"message"`
	} `json:"errorDetail"`
	Error string `json:"error"`
}

// message counts one complete line.
func (p *Parser) message(line []byte) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' {
		return
	}
	var m wire
	if json.Unmarshal(line, &m) != nil {
		return
	}
	if p.err == "" {
		msg := m.Error
		if m.ErrorDetail != nil && m.ErrorDetail.Message != "" {
			msg = m.ErrorDetail.Message
		}
		if len(msg) > maxError {
			msg = msg[:maxError]
		}
		p.err = msg
	}
	switch m.Status {
	case "Already exists", "Downloading", "Download complete", "Pull complete":
	default:
		return
	}
	l := p.layer(m.ID)
	if l == nil {
		return
	}
	switch m.Status {
	case "Already exists":
		l.exists = true
	case "Download complete":
		l.downloaded = true
	case "Pull complete":
		l.pulled = true
	case "Downloading":
		if d := m.Progress; d != nil {
			l.current = max(l.current, d.Current, 0)
			l.total = max(l.total, d.Total, 0)
		}
	}
}

// layer returns id's state, or nil when id cannot be followed.
func (p *Parser) layer(id string) *layer {
	if id == "" || len(id) > maxID {
		return nil
	}
	if l, ok := p.layers[id]; ok {
		return l
	}
	if len(p.layers) >= MaxLayers {
		return nil
	}
	if p.layers == nil {
		p.layers = make(map[string]*layer)
	}
	l := &layer{}
	p.layers[id] = l
	return l
}

// Result counts what the stream reported so far, a last line without its
// newline included.
func (p *Parser) Result() Result {
	if len(p.line) > 0 && !p.skipping {
		p.message(p.line)
		p.line = p.line[:0]
	}
	r := Result{Error: p.err}
	for _, l := range p.layers {
		downloaded := l.downloaded || (l.pulled && !l.exists)
		switch {
		case downloaded:
			r.LayersDownloaded++
		case l.exists:
			r.LayersReused++
		}
		b := l.current
		if downloaded && l.total > 0 {
			b = l.total
		}
		r.BytesDownloaded = addCapped(r.BytesDownloaded, b)
	}
	return r
}

// addCapped adds without overflowing: a stream may claim any size.
func addCapped(a, b int64) int64 {
	const maxInt64 = 1<<63 - 1
	if b > maxInt64-a {
		return maxInt64
	}
	return a + b
}
