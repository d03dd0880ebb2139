package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// Serving limits.
const (
	// maxInflightPacket bounds the queries ServePacket answers at once;
	// datagrams beyond it are dropped (the client retries).
	maxInflightPacket = 256
	// maxInflightStream bounds the pipelined queries of one stream.
	maxInflightStream = 16
	// streamIdle closes a stream with no query for this long (RFC 7766
	// suggests seconds).
	streamIdle = 10 * time.Second
	// streamWriteTimeout bounds one response write on a stream.
	streamWriteTimeout = 10 * time.Second
	// maxStreamQueries closes a stream after this many queries.
	maxStreamQueries = 65535
)

// ServePacket answers queries arriving on pc until ctx is done, then returns
// nil once every query in flight has been answered or abandoned. A read error
// before that is returned. Queries are answered concurrently (at most 256 at
// once; more are dropped). pc is not closed, but its read deadline is set to
// the past when ctx is done.
func (s *Server) ServePacket(ctx context.Context, pc net.PacketConn) error {
	stop := context.AfterFunc(ctx, func() { pc.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, maxInflightPacket)
	buf := make([]byte, maxMsg)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("dns: serve %s: %w", pc.LocalAddr(), err)
		}
		if n < 12 {
			continue
		}
		select {
		case sem <- struct{}{}:
		default:
			s.log.Debug("dns: too many queries in flight; dropped one", "from", addr)
			continue
		}
		q := make([]byte, n)
		copy(q, buf[:n])
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			resp, err := s.handle(ctx, q, true)
			if err != nil {
				s.log.Debug("dns: query", "from", addr, "err", err)
			}
			if resp == nil {
				return
			}
			if _, err := pc.WriteTo(resp, addr); err != nil && ctx.Err() == nil {
				s.log.Debug("dns: write response", "to", addr, "err", err)
			}
		}()
	}
}

// ServeStream answers DNS over a stream (TCP, RFC 7766: each message behind
// a two-byte length) until the peer closes it, it has been idle for 10s,
// ctx is done, or the peer breaks the framing. Pipelined queries are answered
// concurrently (16 at once per stream), possibly out of order. ServeStream
// closes c. It returns nil on a normal end and the cause otherwise.
func (s *Server) ServeStream(ctx context.Context, c net.Conn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
		c.Close()
	}()
	var wmu sync.Mutex
	sem := make(chan struct{}, maxInflightStream)
	var hdr [2]byte
	for range maxStreamQueries {
		if err := c.SetReadDeadline(time.Now().Add(streamIdle)); err != nil {
			return streamErr(ctx, err)
		}
		if got, err := io.ReadFull(c, hdr[:]); err != nil {
			if got == 0 && len(sem) > 0 && errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
				continue // not idle: answers are still being worked on
			}
			return streamErr(ctx, err)
		}
		n := int(binary.BigEndian.Uint16(hdr[:]))
		if n < 12 {
			return fmt.Errorf("dns: stream from %s: message of %d bytes is shorter than a header", c.RemoteAddr(), n)
		}
		q := make([]byte, n)
		if _, err := io.ReadFull(c, q); err != nil {
			return streamErr(ctx, err)
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			resp, err := s.handle(ctx, q, false)
			if err != nil {
				s.log.Debug("dns: query", "from", c.RemoteAddr(), "err", err)
			}
			if resp == nil || len(resp) > maxMsg {
				return
			}
			out := make([]byte, 2+len(resp))
			binary.BigEndian.PutUint16(out, uint16(len(resp)))
			copy(out[2:], resp)
			wmu.Lock()
			defer wmu.Unlock()
			c.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
			if _, err := c.Write(out); err != nil {
				cancel() // the stream is broken: stop reading too
			}
		}()
	}
	return nil
}

// streamErr turns a read error into ServeStream's result: nil for the normal
// ends (EOF, idle timeout, cancellation).
func streamErr(ctx context.Context, err error) error {
	// io.ErrClosedPipe: a conn such as net.Pipe's reports its peer's close
	// so, even from SetReadDeadline between two queries.
	if ctx.Err() != nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	return fmt.Errorf("dns: stream: %w", err)
}
