package tun

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/tunsocks/tunsocks/stack"
)

// Pcap writes packets to a pcap file with link type RAW (IPv4/IPv6 without a
// link header), the format Wireshark and tcpdump read for TUN captures. It is
// safe for concurrent use.
type Pcap struct {
	mu      sync.Mutex
	w       io.Writer
	buf     *bufio.Writer
	pw      *pcapgo.Writer
	snaplen int
	closed  bool
	err     error // first write error; later writes are skipped
}

// NewPcap writes the pcap file header to w and returns a writer for packets.
// snaplen limits how many bytes of each packet are stored; 0 means 65535.
// Output is buffered: call Flush or Close. Close closes w if it is an
// io.Closer.
func NewPcap(w io.Writer, snaplen int) (*Pcap, error) {
	if w == nil {
		return nil, errors.New("tun: pcap: nil writer")
	}
	if snaplen == 0 {
		snaplen = 65535
	}
	if snaplen < 0 || snaplen > 262144 {
		return nil, fmt.Errorf("tun: pcap: snaplen %d out of range 1..262144", snaplen)
	}
	buf := bufio.NewWriterSize(w, 64<<10)
	pw := pcapgo.NewWriter(buf)
	if err := pw.WriteFileHeader(uint32(snaplen), layers.LinkTypeRaw); err != nil {
		return nil, fmt.Errorf("tun: pcap header: %w", err)
	}
	return &Pcap{w: w, buf: buf, pw: pw, snaplen: snaplen}, nil
}

// WritePacket records one packet seen at time t. After the first write error
// every later call returns that error.
func (p *Pcap) WritePacket(t time.Time, pkt []byte) error {
	capLen := min(len(pkt), p.snaplen)
	ci := gopacket.CaptureInfo{Timestamp: t, CaptureLength: capLen, Length: len(pkt)}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return fmt.Errorf("tun: pcap: %w", io.ErrClosedPipe)
	}
	if p.err != nil {
		return p.err
	}
	if err := p.pw.WritePacket(ci, pkt[:capLen]); err != nil {
		p.err = fmt.Errorf("tun: pcap write: %w", err)
		return p.err
	}
	return nil
}

// Flush writes buffered packets to the underlying writer.
func (p *Pcap) Flush() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	if err := p.buf.Flush(); err != nil {
		return errors.Join(p.err, fmt.Errorf("tun: pcap flush: %w", err))
	}
	return p.err
}

// Close flushes and closes the underlying writer when it is an io.Closer.
// Later writes fail; Close is idempotent.
func (p *Pcap) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	err := p.err
	if ferr := p.buf.Flush(); ferr != nil {
		err = errors.Join(err, fmt.Errorf("tun: pcap flush: %w", ferr))
	}
	if c, ok := p.w.(io.Closer); ok {
		if cerr := c.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("tun: pcap close: %w", cerr))
		}
	}
	return err
}

// Capture wraps dev so every packet read from it and written to it is
// recorded in p. Written packets are recorded before the device sees them
// (the Linux device coalesces them in place). Recording errors never fail
// the packet path; the first one is reported by p's Flush and Close.
// Closing the returned device closes dev but not p.
//
// The stack records packets itself when given the Pcap as stack.Config.Tap,
// leaving out what is not the app's traffic (system TCP mode's translated
// leg); Capture is for other users of a device.
func Capture(dev BatchDevice, p *Pcap) BatchDevice {
	return &captureDevice{BatchDevice: dev, p: p}
}

type captureDevice struct {
	BatchDevice
	p *Pcap
}

func (c *captureDevice) record(now time.Time, pkt []byte) {
	_ = c.p.WritePacket(now, pkt)
}

func (c *captureDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := c.BatchDevice.Read(bufs, sizes, offset)
	if n > 0 {
		now := time.Now()
		for i := range n {
			c.record(now, bufs[i][offset:offset+sizes[i]])
		}
	}
	return n, err
}

// ReadValidated passes the wrapped device's checksum knowledge through
// (stack.ValidatingDevice); a device without it validated nothing.
func (c *captureDevice) ReadValidated(bufs [][]byte, sizes []int, valid []bool, offset int) (int, error) {
	v, ok := c.BatchDevice.(stack.ValidatingDevice)
	if !ok {
		n, err := c.Read(bufs, sizes, offset)
		clear(valid[:n])
		return n, err
	}
	n, err := v.ReadValidated(bufs, sizes, valid, offset)
	if n > 0 {
		now := time.Now()
		for i := range n {
			c.record(now, bufs[i][offset:offset+sizes[i]])
		}
	}
	return n, err
}

func (c *captureDevice) Write(bufs [][]byte, offset int) (int, error) {
	now := time.Now()
	for _, b := range bufs {
		if offset <= len(b) {
			c.record(now, b[offset:])
		}
	}
	return c.BatchDevice.Write(bufs, offset)
}

// GSOMaxSize passes through the wrapped device's GSOMaxSize (0 if it has
// none).
func (c *captureDevice) GSOMaxSize() int {
	if g, ok := c.BatchDevice.(stack.GSODevice); ok {
		return g.GSOMaxSize()
	}
	return 0
}

// WriteGSO records the packet behind the virtio header, as a capture on a
// NIC with TSO would show it (one large segment, checksum left to the
// kernel), then writes it.
func (c *captureDevice) WriteGSO(b []byte) error {
	g, ok := c.BatchDevice.(stack.GSODevice)
	if !ok {
		return errors.New("tun: WriteGSO on a device without segmentation offload")
	}
	if len(b) > VnetHdrLen {
		c.record(time.Now(), b[VnetHdrLen:])
	}
	return g.WriteGSO(b)
}

var (
	_ stack.GSODevice        = (*captureDevice)(nil)
	_ stack.ValidatingDevice = (*captureDevice)(nil)
)
