package tun_test

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/tunsocks/tunsocks/tun"
	"github.com/tunsocks/tunsocks/tun/tuntest"
)

type closeRecorder struct {
	bytes.Buffer
	closed bool
}

func (c *closeRecorder) Close() error { c.closed = true; return nil }

// newCapturePipe returns an in-memory device and its peer, a Pcap over out,
// and the device wrapped in a capture.
func newCapturePipe(t *testing.T, out *closeRecorder) (*tuntest.Peer, *tun.Pcap, tun.BatchDevice) {
	t.Helper()
	p, err := tun.NewPcap(out, 0)
	if err != nil {
		t.Fatal(err)
	}
	dev, peer := tuntest.NewPipe(1500)
	t.Cleanup(func() { dev.Close() })
	return peer, p, tun.Capture(dev, p)
}

func TestCaptureRecordsBothDirections(t *testing.T) {
	var out closeRecorder
	peer, p, cdev := newCapturePipe(t, &out)

	in := []byte{0x45, 0, 0, 20, 1, 2, 3, 4, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1}
	if err := peer.Inject(in); err != nil {
		t.Fatal(err)
	}
	bufs := [][]byte{make([]byte, tun.Headroom+1500)}
	sizes := []int{0}
	if n, err := cdev.Read(bufs, sizes, tun.Headroom); n != 1 || err != nil {
		t.Fatalf("Read = %d, %v", n, err)
	}
	outPkt := append(make([]byte, tun.Headroom), 0x60, 1, 2, 3, 4, 5, 6, 7)
	if _, err := cdev.Write([][]byte{outPkt}, tun.Headroom); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := peer.Next(ctx); err != nil {
		t.Fatal(err)
	}
	// Concurrent writers must not corrupt the file.
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				p.WritePacket(time.Now(), in)
			}
		}()
	}
	wg.Wait()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if !out.closed {
		t.Error("Close did not close the writer")
	}
	if err := p.WritePacket(time.Now(), in); err == nil {
		t.Error("WritePacket after Close succeeded")
	}

	r, err := pcapgo.NewReader(&out.Buffer)
	if err != nil {
		t.Fatal(err)
	}
	if r.LinkType() != layers.LinkTypeRaw {
		t.Fatalf("link type %v, want raw", r.LinkType())
	}
	var got [][]byte
	for range 1000 {
		data, _, err := r.ReadPacketData()
		if err != nil {
			break
		}
		got = append(got, data)
	}
	if len(got) != 2+400 {
		t.Fatalf("%d packets in file, want 402", len(got))
	}
	if !bytes.Equal(got[0], in) || !bytes.Equal(got[1], outPkt[tun.Headroom:]) {
		t.Fatalf("first packets %x %x", got[0], got[1])
	}
}

func TestPcapSnaplen(t *testing.T) {
	var out bytes.Buffer
	p, err := tun.NewPcap(&out, 4)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1700000000, 123456789)
	p.WritePacket(at, []byte{1, 2, 3, 4, 5, 6})
	p.Flush()
	r, err := pcapgo.NewReader(&out)
	if err != nil {
		t.Fatal(err)
	}
	if r.Snaplen() != 4 {
		t.Errorf("file header snaplen %d, want 4", r.Snaplen())
	}
	data, ci, err := r.ReadPacketData()
	if err != nil || len(data) != 4 || ci.Length != 6 {
		t.Fatalf("got %x (len %d of %d), %v", data, len(data), ci.Length, err)
	}
	if want := at.Truncate(time.Microsecond); !ci.Timestamp.Equal(want) {
		t.Errorf("timestamp %v, want %v", ci.Timestamp, want)
	}
	if _, err := tun.NewPcap(&out, -1); err == nil {
		t.Fatal("negative snaplen accepted")
	}
	if _, err := tun.NewPcap(nil, 0); err == nil {
		t.Fatal("nil writer accepted")
	}
}
