package eventstream

import (
	"context"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/client"
)

// fakeEngine is an engine's event stream in memory, served as dockerd
// serves it: a subscription with since or until is first sent those of the
// last Kept events in range, then the live ones; one with until ends after
// its replay (the fake takes every until as past). Messages are sent one at
// a time and a stream ends with a value on Err, as the moby client does.
type fakeEngine struct {
	t *testing.T

	mu       sync.Mutex
	log      []events.Message
	streams  map[*fakeStream]bool
	asked    []client.EventsListOptions    // every subscription, in order
	pingErrs []error                       // the answers to the next pings, in order
	pingErr  error                         // then the answer to every ping, when set
	pingHang chan struct{}                 // while set and open, a ping does not answer
	pinged   chan struct{}                 // told of each ping, when set
	untilErr error                         // how a stream with until ends (io.EOF if nil)
	hold     chan struct{}                 // while set and open, a stream with until does not end
	gate     chan struct{}                 // while set and open, a stream sends nothing, its replay included
	told     chan client.EventsListOptions // told of each subscription, when set
}

// fakeStream is one open subscription's live events and how it ends.
type fakeStream struct {
	live chan events.Message
	end  chan error
}

func newFake(t *testing.T) *fakeEngine {
	return &fakeEngine{t: t, streams: map[*fakeStream]bool{}}
}

func (f *fakeEngine) Ping(ctx context.Context, _ client.PingOptions) (client.PingResult, error) {
	f.mu.Lock()
	err, hang, pinged := f.pingErr, f.pingHang, f.pinged
	if len(f.pingErrs) > 0 {
		err, f.pingErrs = f.pingErrs[0], f.pingErrs[1:]
	}
	f.mu.Unlock()
	if pinged != nil {
		pinged <- struct{}{}
	}
	if hang != nil {
		select {
		case <-hang:
		case <-ctx.Done():
			return client.PingResult{}, ctx.Err()
		}
	}
	if err != nil {
		return client.PingResult{}, err
	}
	return client.PingResult{APIVersion: "1.41"}, nil
}

func (f *fakeEngine) Events(ctx context.Context, opts client.EventsListOptions) client.EventsResult {
	since, until := f.stamp(opts.Since), f.stamp(opts.Until)
	f.mu.Lock()
	f.asked = append(f.asked, opts)
	var replay []events.Message
	if !since.IsZero() || !until.IsZero() {
		for _, m := range f.log[max(0, len(f.log)-Kept):] {
			// An undated event (dockerd never sends one) has no
			// time to leave it out by.
			at := time.Unix(0, m.TimeNano)
			if m.TimeNano != 0 && (at.Before(since) || (!until.IsZero() && at.After(until))) {
				continue
			}
			replay = append(replay, m)
		}
	}
	s := &fakeStream{live: make(chan events.Message, 1024), end: make(chan error, 1)}
	if until.IsZero() {
		f.streams[s] = true
	}
	untilErr, hold, gate, told := f.untilErr, f.hold, f.gate, f.told
	f.mu.Unlock()
	if told != nil {
		told <- opts
	}

	msgs, errs := make(chan events.Message), make(chan error, 1)
	send := func(m events.Message) bool {
		select {
		case msgs <- m:
			return true
		case <-ctx.Done():
			errs <- ctx.Err()
			return false
		}
	}
	go func() {
		defer func() { f.mu.Lock(); delete(f.streams, s); f.mu.Unlock() }()
		if gate != nil {
			select {
			case <-gate:
			case <-ctx.Done():
				errs <- ctx.Err()
				return
			}
		}
		for _, m := range replay {
			if !send(m) {
				return
			}
		}
		if !until.IsZero() {
			if hold != nil {
				select {
				case <-hold:
				case <-ctx.Done():
					errs <- ctx.Err()
					return
				}
			}
			if untilErr == nil {
				untilErr = io.EOF
			}
			errs <- untilErr
			return
		}
		for {
			select {
			case m := <-s.live:
				if !send(m) {
					return
				}
			case err := <-s.end:
				// What was published before the break is sent first.
				for len(s.live) > 0 {
					if !send(<-s.live) {
						return
					}
				}
				errs <- err
				return
			case <-ctx.Done():
				errs <- ctx.Err()
				return
			}
		}
	}()
	return client.EventsResult{Messages: msgs, Err: errs}
}

// publish logs events and sends them to every open stream.
func (f *fakeEngine) publish(ms ...events.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, ms...)
	for s := range f.streams {
		for _, m := range ms {
			s.live <- m
		}
	}
}

// breakStreams ends every open stream with err, once the events already
// sent to it are read.
func (f *fakeEngine) breakStreams(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for s := range f.streams {
		s.end <- err
		delete(f.streams, s)
	}
}

// subscriptions are the options of every subscription so far.
func (f *fakeEngine) subscriptions() []client.EventsListOptions {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]client.EventsListOptions(nil), f.asked...)
}

// stamp reads the seconds.nanoseconds form the follower sends.
func (f *fakeEngine) stamp(s string) time.Time {
	if s == "" {
		return time.Time{}
	}
	sec, nsec, _ := strings.Cut(s, ".")
	a, err1 := strconv.ParseInt(sec, 10, 64)
	b, err2 := strconv.ParseInt(nsec, 10, 64)
	if err1 != nil || err2 != nil || len(nsec) != 9 {
		f.t.Errorf("events: unreadable time %q", s)
	}
	return time.Unix(a, b)
}
