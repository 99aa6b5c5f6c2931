package auditlog

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/prune-guard/prune-guard/audit"
)

// MaxLineBytes bounds one line. prune-guard's own lines stay far below it
// (dockerd refuses a request line and headers over 1 MiB, and a line repeats
// the URI at most a few times); a longer line is counted and skipped, so a
// corrupt file cannot make the reader hold more than this at once.
const MaxLineBytes = 4 << 20

// Line is one parsed audit line: a decision, or an event (a line without a
// decision field, such as "prune-guard started" or "policy loaded"). Its
// fields are audit.Record's, the schema the writer uses; an event's own
// fields are in Raw.
type Line struct {
	audit.Record
	// Number is the line's 1-based position in the input.
	Number int
	// Raw is the line as read, without its line ending.
	Raw []byte
	// Time is the record's time parsed; zero when it is missing or not
	// RFC 3339 (Record.Time holds the text).
	Time time.Time
	// IsDecision is set for lines that carry a decision field.
	IsDecision bool
}

// wire is a line as encoding/json reads it: the record, with the decision
// as a pointer so that "decision" present but empty still marks a decision
// line (and is then refused as unknown).
type wire struct {
	audit.Record
	Decision *audit.Outcome `json:"decision"`
}

// Reader reads an audit log line by line. Input compressed with gzip (a
// rotated log) is decompressed transparently.
type Reader struct {
	src     io.Reader
	br      *bufio.Reader
	started bool
	number  int
	buf     []byte
	w       wire
	line    Line

	// Skipped counts lines that were not JSON audit records: not a JSON
	// object, fields of the wrong type, an unknown decision, or longer
	// than MaxLineBytes. FirstSkipped is the first one's line number.
	Skipped      int64
	FirstSkipped int
	// TooLong counts the skipped lines that exceeded MaxLineBytes.
	TooLong int64
	// Read counts the non-blank lines read, skipped ones included.
	Read int64
}

// NewReader returns a Reader of r.
func NewReader(r io.Reader) *Reader { return &Reader{src: r} }

const bufSize = 64 << 10

// start wraps the source, detecting gzip by its magic number, so that
// "audit audit.jsonl.2.gz" works as logrotate leaves it.
func (r *Reader) start() error {
	r.started = true
	br := bufio.NewReaderSize(r.src, bufSize)
	magic, err := br.Peek(2)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("gzip: %w", err)
		}
		br = bufio.NewReaderSize(zr, bufSize)
	}
	r.br = br
	return nil
}

// Next returns the next audit line, or io.EOF after the last. Blank lines are
// passed over; lines that are not audit records are counted in Skipped and
// passed over. Any other error is the input's. The Line, and its Raw bytes,
// are overwritten by the next call.
func (r *Reader) Next() (*Line, error) {
	if !r.started {
		if err := r.start(); err != nil {
			return nil, err
		}
	}
	for {
		raw, tooLong, err := r.readLine()
		if err != nil {
			return nil, err
		}
		raw = bytes.TrimSpace(raw)
		if len(raw) == 0 && !tooLong {
			continue
		}
		r.Read++
		if tooLong {
			r.TooLong++
			r.skip()
			continue
		}
		if !r.parse(raw) {
			r.skip()
			continue
		}
		return &r.line, nil
	}
}

func (r *Reader) skip() {
	if r.Skipped == 0 {
		r.FirstSkipped = r.number
	}
	r.Skipped++
}

// readLine returns the next line without its newline. A line longer than
// MaxLineBytes is read through to its end but not kept.
func (r *Reader) readLine() (line []byte, tooLong bool, err error) {
	r.buf = r.buf[:0]
	read := false
	for {
		chunk, err := r.br.ReadSlice('\n')
		read = read || len(chunk) > 0
		if !tooLong {
			if len(r.buf)+len(chunk) > MaxLineBytes+len("\r\n") {
				tooLong = true
				r.buf = r.buf[:0]
			} else {
				r.buf = append(r.buf, chunk...)
			}
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			if !read {
				return nil, false, io.EOF
			}
			// A last line without a newline, such as one cut short
			// by a crash: parse what is there.
		case err != nil:
			return nil, false, err
		}
		r.number++
		return r.buf, tooLong, nil
	}
}

// parse fills r.line from raw, reporting whether raw is an audit record.
func (r *Reader) parse(raw []byte) bool {
	// json.Unmarshal accepts "null" into a struct without error, and a
	// record is always an object.
	if raw[0] != '{' {
		return false
	}
	r.w = wire{}
	if err := json.Unmarshal(raw, &r.w); err != nil {
		return false
	}
	w := &r.w
	l := Line{Record: w.Record, Number: r.number, Raw: raw}
	if t, err := time.Parse(time.RFC3339Nano, w.Record.Time); err == nil {
		l.Time = t
	}
	if w.Decision != nil {
		if !w.Decision.Valid() {
			// Counting an unknown decision as any of the three
			// would misstate the summary.
			return false
		}
		l.IsDecision, l.Decision = true, *w.Decision
	}
	r.line = l
	return true
}

// readError says where reading failed.
func readError(r *Reader, err error) error {
	if r.number == 0 {
		return err
	}
	return fmt.Errorf("read after line %d: %w", r.number, err)
}
