package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httputil"
	"strconv"
	"sync"
)

// copyBufSize is the buffer a body is copied through.
const copyBufSize = 32 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// copySized copies exactly n bytes from br to w, each read written at once.
func copySized(w io.Writer, br *bufio.Reader, n int64) error {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	got, err := io.CopyBuffer(w, io.LimitReader(br, n), *bp)
	if err == nil && got < n {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return fmt.Errorf("body: %d of %d bytes: %w", got, n, err)
	}
	return nil
}

// copyChunked forwards a chunked request body. It is read with net/http's
// own chunked reader, so the body ends exactly where the engine's Go server
// will find its end, and is written again as chunks of the proxy's own:
// the engine reads what the proxy read, never the client's framing.
// Trailers are refused: no Docker client sends them, and the engine would
// read them as headers.
func copyChunked(w io.Writer, br *bufio.Reader) error {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	cr := httputil.NewChunkedReader(br)
	var prefix [20]byte
	for {
		n, rerr := cr.Read(buf[:len(buf)-2])
		if n > 0 {
			line := append(strconv.AppendInt(prefix[:0], int64(n), 16), '\r', '\n')
			buf[n], buf[n+1] = '\r', '\n'
			bufs := net.Buffers{line, buf[:n+2]}
			if _, err := bufs.WriteTo(w); err != nil {
				return fmt.Errorf("chunked body: %w", err)
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return fmt.Errorf("chunked body: %w", rerr)
		}
	}
	// The last chunk is read; what follows must be the empty trailer.
	end, err := br.Peek(2)
	if err != nil {
		return fmt.Errorf("chunked body: %w", err)
	}
	if !bytes.Equal(end, crlf) {
		return errors.New("chunked body: trailers are not supported")
	}
	_, _ = br.Discard(2)
	_, err = w.Write([]byte("0\r\n\r\n"))
	return err
}

// relayChunked relays a chunked response body from the engine as it comes,
// each read passed on at once (events, logs -f, pull progress), keeping
// track of the chunk framing to find the body's end. The engine is a Go
// server; framing it does not write ends the connection. When obs is set,
// it is told each piece's chunk data once the client has the piece.
func relayChunked(w io.Writer, br *bufio.Reader, obs Observer) error {
	var sc chunkScanner
	for {
		if br.Buffered() == 0 {
			if _, err := br.Peek(1); err != nil {
				return fmt.Errorf("chunked response: %w", err)
			}
		}
		buf, _ := br.Peek(br.Buffered())
		before := sc
		n, err := sc.scan(buf)
		if err != nil {
			return fmt.Errorf("chunked response: %w", err)
		}
		if n == 0 {
			// Part of a size line: wait for the rest of it.
			if len(buf) == br.Size() {
				return errors.New("chunked response: chunk size line too long")
			}
			if _, err := br.Peek(len(buf) + 1); err != nil {
				return fmt.Errorf("chunked response: %w", err)
			}
			continue
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
		if obs != nil {
			// The same framing scanned again from where this piece
			// began, now handing the chunk data on: the piece is still
			// in br's buffer until Discard.
			_, _ = before.scanData(buf[:n], obs.Body)
		}
		_, _ = br.Discard(n)
		if sc.state == chunkDone {
			return nil
		}
	}
}

type chunkState uint8

const (
	chunkSize    chunkState = iota // at a chunk size line
	chunkData                      // within a chunk's data
	chunkDataEnd                   // at the CRLF after a chunk's data
	chunkTrailer                   // at a trailer line or the final CRLF
	chunkDone
)

// chunkScanner follows chunked framing over a byte stream.
type chunkScanner struct {
	state chunkState
	left  int64 // data bytes left in the chunk
}

// scan advances over as much of buf as it can and reports how many bytes
// it passed; 0 means a line is incomplete.
func (sc *chunkScanner) scan(buf []byte) (int, error) { return sc.scanData(buf, nil) }

// scanData is scan, handing each run of chunk data it passes to data, when
// set.
func (sc *chunkScanner) scanData(buf []byte, data func([]byte)) (int, error) {
	n := 0
	for n < len(buf) && sc.state != chunkDone {
		rest := buf[n:]
		switch sc.state {
		case chunkData:
			k := int(min(int64(len(rest)), sc.left))
			if data != nil && k > 0 {
				data(rest[:k])
			}
			n += k
			if sc.left -= int64(k); sc.left == 0 {
				sc.state = chunkDataEnd
			}
			continue
		}
		i := bytes.Index(rest, crlf)
		if i < 0 {
			return n, nil
		}
		line := rest[:i]
		if err := sc.line(line); err != nil {
			return n, err
		}
		n += i + 2
	}
	return n, nil
}

// line consumes one complete line of the framing.
func (sc *chunkScanner) line(line []byte) error {
	switch sc.state {
	case chunkSize:
		size, _, _ := bytes.Cut(line, []byte(";"))
		v, err := strconv.ParseInt(string(bytes.TrimRight(size, " \t")), 16, 64)
		if err != nil || v < 0 {
			return fmt.Errorf("bad chunk size %q", clip(line))
		}
		sc.left = v
		sc.state = chunkData
		if v == 0 {
			sc.state = chunkTrailer
		}
	case chunkDataEnd:
		if len(line) != 0 {
			return errors.New("chunk data longer than its size")
		}
		sc.state = chunkSize
	case chunkTrailer:
		if len(line) == 0 {
			sc.state = chunkDone
		}
	}
	return nil
}
