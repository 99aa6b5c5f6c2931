package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prune-guard/prune-guard/engine"
	"github.com/prune-guard/prune-guard/guard"
	"github.com/prune-guard/prune-guard/reclaim"
)

// grantTimeout bounds one grant request on the control socket.
const grantTimeout = 10 * time.Second

// controlGranter asks the control socket of the running prune-guard (serve
// or proxy) for reclaim's grants, and puts each in the context its deletes
// are sent with. The token goes nowhere else: not to reclaim, the audit
// log or any error.
type controlGranter struct {
	socket string
	c      *http.Client
}

func newControlGranter(socket string) *controlGranter {
	return &controlGranter{socket: socket, c: &http.Client{Timeout: grantTimeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}}}
}

// Grant implements reclaim.Granter.
func (g *controlGranter) Grant(ctx context.Context, r reclaim.Grant) (context.Context, error) {
	req := guard.GrantRequest{Images: r.Images, Critical: r.Critical, Runs: r.Runs, Usage: guard.GrantUsage{
		DataRoot: r.Usage.Path, Percent: r.Usage.Percent(), StartedPercent: r.StartedPercent,
		TotalBytes: r.Usage.Total, AvailBytes: r.Usage.Avail,
	}}
	for _, u := range r.Untag {
		req.Untag = append(req.Untag, guard.GrantName{Ref: u.Ref, Image: u.Image})
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://prune-guard/reclaim/grants", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := g.c.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("ask %s: %w", g.socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("read %s's answer: %w", g.socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered %s: %s", g.socket, resp.Status, strings.TrimSpace(string(b)))
	}
	var ans guard.GrantAnswer
	if err := json.Unmarshal(b, &ans); err != nil || ans.Token == "" {
		return nil, fmt.Errorf("%s answered no grant (is it prune-guard of another version?)", g.socket)
	}
	return engine.WithHeader(ctx, guard.GrantHeader, ans.Token), nil
}
