package auditlog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Options say what a report shows.
type Options struct {
	Filter Filter
	// JSON writes the matching lines unchanged and the summary as one
	// JSON object, {"summary": {...}}, on the last line.
	JSON bool
	// SummaryOnly leaves the matching lines out.
	SummaryOnly bool
}

// Report reads an audit log from in and writes the lines o.Filter keeps,
// then their summary, to out. The lines come first because the log is
// streamed: a summary at the top would need the whole log in memory, or a
// second read, which standard input cannot give.
//
// Lines that are not audit records are counted in the summary, not fatal.
// The error is in's or out's; the summary counts what was read before it.
func Report(in io.Reader, out io.Writer, o Options) (*Summary, error) {
	bw := bufio.NewWriterSize(out, bufSize)
	r := NewReader(in)
	s := NewSummary(o.Filter)
	for {
		l, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			s.setRead(r)
			bw.Flush()
			return s, readError(r, err)
		}
		if !o.Filter.Match(l) {
			continue
		}
		s.Add(l)
		if o.SummaryOnly {
			continue
		}
		if o.JSON {
			bw.Write(l.Raw)
			err = bw.WriteByte('\n')
		} else {
			err = writeLine(bw, l)
		}
		if err != nil {
			// A closed pipe: reading on would be wasted.
			return s, fmt.Errorf("write: %w", err)
		}
	}
	s.setRead(r)
	if o.JSON {
		line, err := marshal(struct {
			Summary *Summary `json:"summary"`
		}{s})
		if err != nil {
			return s, err
		}
		bw.Write(line)
	} else {
		if s.Matched > 0 && !o.SummaryOnly {
			bw.WriteByte('\n')
		}
		s.WriteText(bw)
	}
	if err := bw.Flush(); err != nil {
		return s, fmt.Errorf("write: %w", err)
	}
	return s, nil
}

// marshal encodes v as one JSON line, newline included. It does not escape
// <, > and & as encoding/json does by default for HTML: the output is read
// by people and jq, and queries are full of &.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
