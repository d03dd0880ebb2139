package tun

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

// inNetns runs fn on a locked OS thread inside a new, unnamed network
// namespace; the namespace disappears when fn returns (nothing refers to it
// any more). The thread is only returned to the scheduler if switching back
// to the original namespace worked; otherwise it dies with the goroutine.
// fn reports failures with t.Error (not Fatal: it is not the test goroutine).
func inNetns(t *testing.T, fn func(nl *netlink.Handle)) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			t.Errorf("get netns: %v", err)
			return
		}
		defer orig.Close()
		ns, err := netns.New() // unshare(CLONE_NEWNET) for this thread
		if err != nil {
			t.Errorf("new netns: %v", err)
			return
		}
		defer func() {
			ns.Close()
			if err := netns.Set(orig); err != nil {
				t.Errorf("restore netns: %v", err)
				return // keep the thread locked: it exits with the goroutine
			}
			runtime.UnlockOSThread()
		}()
		nl, err := netlink.NewHandleAt(ns)
		if err != nil {
			t.Errorf("netlink handle: %v", err)
			return
		}
		defer nl.Close()
		fn(nl)
	}()
	<-done
}

func addrsOf(t *testing.T, nl *netlink.Handle, link netlink.Link) map[netip.Prefix]int {
	t.Helper()
	got := map[netip.Prefix]int{}
	list, err := nl.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		t.Errorf("addr list: %v", err)
		return got
	}
	for _, a := range list {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		if ip.Is6() && ip.IsLinkLocalUnicast() {
			continue
		}
		got[netip.PrefixFrom(ip.Unmap(), ones)] = a.Flags
	}
	return got
}

func TestOpenCreatesConfiguresAndRemoves(t *testing.T) {
	testenv.NeedRoot(t, "a TUN device in a fresh network namespace")
	for _, offload := range []bool{true, false} {
		inNetns(t, func(nl *netlink.Handle) {
			v4 := netip.MustParsePrefix("10.9.0.1/24")
			v6 := netip.MustParsePrefix("fd09::1/64")
			dev, err := Open(context.Background(), Config{Name: "tstest0", FD: NoFD, Addrs: []netip.Prefix{v4, v6}, MTU: 1400, Offload: offload})
			if err != nil {
				t.Errorf("Open: %v", err)
				return
			}
			defer dev.Close()
			// wireguard-go's CreateTUN would start a netlink listener and
			// an up/down probe waking every second, for an Events channel
			// nobody reads.
			if n := testenv.Goroutines(func(s string) bool { return strings.Contains(s, "golang.zx2c4.com/wireguard/tun.") }); n != 0 {
				t.Errorf("offload %v: %d wireguard-go goroutines run for the device, want none", offload, n)
			}
			if dev.Name() != "tstest0" || !dev.Created() {
				t.Errorf("name %q created %v", dev.Name(), dev.Created())
			}
			if offload && dev.BatchSize() < 2 {
				t.Errorf("offload on but BatchSize %d", dev.BatchSize())
			}
			if !offload && dev.BatchSize() != 1 {
				t.Errorf("offload off but BatchSize %d", dev.BatchSize())
			}
			link, err := nl.LinkByName("tstest0")
			if err != nil {
				t.Errorf("link: %v", err)
				return
			}
			if link.Attrs().MTU != 1400 {
				t.Errorf("MTU %d, want 1400", link.Attrs().MTU)
			}
			if link.Attrs().Flags&net.FlagUp == 0 {
				t.Errorf("link not up: %v", link.Attrs().Flags)
			}
			if m, err := dev.MTU(); err != nil || m != 1400 {
				t.Errorf("dev.MTU() = %d, %v", m, err)
			}
			addrs := addrsOf(t, nl, link)
			if _, ok := addrs[v4]; !ok {
				t.Errorf("addresses %v lack %v", addrs, v4)
			}
			if flags, ok := addrs[v6]; !ok {
				t.Errorf("addresses %v lack %v", addrs, v6)
			} else if flags&unix.IFA_F_NODAD == 0 || flags&unix.IFA_F_TENTATIVE != 0 {
				t.Errorf("%v flags %#x: want nodad, not tentative", v6, flags)
			}

			// The kernel routes a datagram for the subnet into the TUN and
			// Read returns it with the offset honoured.
			sock, err := net.Dial("udp", "10.9.0.2:9")
			if err != nil {
				t.Errorf("dial: %v", err)
				return
			}
			defer sock.Close()
			bufs := make([][]byte, max(dev.BatchSize(), 1))
			for i := range bufs {
				bufs[i] = make([]byte, Headroom+65535)
			}
			sizes := make([]int, len(bufs))
			found := false
			deadline := time.Now().Add(10 * time.Second)
			for i := 0; i < 100 && !found && time.Now().Before(deadline); i++ {
				sock.Write([]byte("probe"))
				n, err := readWithTimeout(dev, bufs, sizes, time.Second)
				if err != nil {
					continue
				}
				for j := range n {
					pkt := bufs[j][Headroom : Headroom+sizes[j]]
					if len(pkt) >= 28 && pkt[0]>>4 == 4 && pkt[9] == unix.IPPROTO_UDP && string(pkt[28:]) == "probe" {
						found = true
					}
				}
			}
			if !found {
				t.Error("the probe datagram never came out of the TUN")
			}

			if err := dev.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			var nf netlink.LinkNotFoundError
			if _, err := nl.LinkByName("tstest0"); !errors.As(err, &nf) {
				t.Errorf("link still there after Close: %v", err)
			}
		})
	}
}

// readWithTimeout closes nothing; it just stops waiting. The pending Read
// returns when the next packet arrives (or the device closes).
func readWithTimeout(dev *Device, bufs [][]byte, sizes []int, d time.Duration) (int, error) {
	type res struct {
		n   int
		err error
	}
	c := make(chan res, 1)
	go func() {
		n, err := dev.Read(bufs, sizes, Headroom)
		c <- res{n, err}
	}()
	select {
	case r := <-c:
		return r.n, r.err
	case <-time.After(d):
		// Let the Read finish before anyone reuses bufs.
		r := <-c
		return r.n, r.err
	}
}

func TestOpenAdoptsDescriptorWithoutTouchingIt(t *testing.T) {
	testenv.NeedRoot(t, "a TUN device in a fresh network namespace")
	inNetns(t, func(nl *netlink.Handle) {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Errorf("open /dev/net/tun: %v", err)
			return
		}
		ifr, _ := unix.NewIfreq("tsadopt0")
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			t.Errorf("TUNSETIFF: %v", err)
			return
		}
		keep, err := unix.Dup(fd) // keeps the interface alive after the device closes fd
		if err != nil {
			unix.Close(fd)
			t.Errorf("dup: %v", err)
			return
		}
		defer unix.Close(keep)
		link, err := nl.LinkByName("tsadopt0")
		if err != nil {
			t.Errorf("link: %v", err)
			return
		}
		orig := netip.MustParsePrefix("10.8.0.1/24")
		if err := nl.AddrAdd(link, &netlink.Addr{IPNet: prefixToIPNet(orig)}); err != nil {
			t.Errorf("addr add: %v", err)
		}
		if err := nl.LinkSetMTU(link, 1280); err != nil {
			t.Errorf("set mtu: %v", err)
		}

		dev, err := Open(context.Background(), Config{
			FD: fd, Name: "ignored", MTU: 9000, Offload: true,
			Addrs: []netip.Prefix{netip.MustParsePrefix("10.7.0.1/24"), netip.MustParsePrefix("fd07::1/64")},
		})
		if err != nil {
			unix.Close(fd)
			t.Errorf("Open adopt: %v", err)
			return
		}
		if dev.Name() != "tsadopt0" || dev.Created() {
			t.Errorf("name %q created %v", dev.Name(), dev.Created())
		}
		if dev.BatchSize() != 1 {
			t.Errorf("adopted non-vnet descriptor has BatchSize %d", dev.BatchSize())
		}
		link, _ = nl.LinkByName("tsadopt0")
		got := addrsOf(t, nl, link)
		if _, ok := got[orig]; !ok || len(got) != 1 {
			t.Errorf("addresses changed: %v, want only %v", got, orig)
		}
		if link.Attrs().MTU != 1280 {
			t.Errorf("MTU changed to %d", link.Attrs().MTU)
		}
		if link.Attrs().Flags&net.FlagUp != 0 {
			t.Error("adopted link was set up")
		}
		if err := dev.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if _, err := nl.LinkByName("tsadopt0"); err != nil {
			t.Errorf("adopted interface deleted by Close: %v", err)
		}
	})
}

func TestOpenRejectsNonTUNDescriptor(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := Open(context.Background(), Config{FD: int(f.Fd())}); err == nil {
		t.Fatal("Open adopted /dev/null")
	}
	if _, err := f.Stat(); err != nil {
		t.Fatalf("descriptor damaged: %v", err)
	}
	if _, err := Open(context.Background(), Config{FD: -5}); err == nil {
		t.Fatal("Open accepted fd -5")
	}
	if _, err := Open(context.Background(), Config{FD: NoFD, MTU: 10}); err == nil {
		t.Fatal("Open accepted MTU 10")
	}
}

// TestReadReportsDeletedInterface: deleting the interface under a blocked
// Read (and under the next one) ends it with os.ErrClosed, whatever the
// descriptor itself says (EBADFD or "not pollable"), so the stack reports
// the device as gone instead of retrying.
func TestReadReportsDeletedInterface(t *testing.T) {
	testenv.NeedRoot(t, "a TUN device in a fresh network namespace")
	for _, offload := range []bool{true, false} {
		inNetns(t, func(nl *netlink.Handle) {
			dev, err := Open(context.Background(), Config{Name: "tsgone0", FD: NoFD, MTU: 1500, Offload: offload})
			if err != nil {
				t.Errorf("Open: %v", err)
				return
			}
			defer dev.Close()
			bufs := [][]byte{make([]byte, Headroom+65535)}
			if dev.BatchSize() > 1 {
				bufs = make([][]byte, dev.BatchSize())
				for i := range bufs {
					bufs[i] = make([]byte, Headroom+65535)
				}
			}
			sizes := make([]int, len(bufs))
			errc := make(chan error, 1)
			go func() {
				// The kernel may send the odd packet of its own (IPv6
				// MLD, router solicitation); read until the error.
				for {
					if _, err := dev.Read(bufs, sizes, Headroom); err != nil {
						errc <- err
						return
					}
				}
			}()
			time.Sleep(50 * time.Millisecond) // let it block
			link, err := nl.LinkByName("tsgone0")
			if err != nil {
				t.Errorf("find link: %v", err)
				return
			}
			if err := nl.LinkDel(link); err != nil {
				t.Errorf("delete link: %v", err)
				return
			}
			select {
			case err := <-errc:
				if !errors.Is(err, os.ErrClosed) {
					t.Errorf("offload=%v: blocked Read after the interface was deleted: %v, want os.ErrClosed", offload, err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("offload=%v: Read still blocked 10 s after the interface was deleted", offload)
				dev.Close()
				<-errc
				return
			}
			if _, err := dev.Read(bufs, sizes, Headroom); !errors.Is(err, os.ErrClosed) {
				t.Errorf("offload=%v: Read after the interface was deleted: %v, want os.ErrClosed", offload, err)
			}
		})
	}
}

// TestReadValidatedFollowsTheKernel: with offload, a local socket's
// datagram leaves its checksum to the "hardware" (NEEDS_CSUM), so the
// device completes it and vouches for it; a raw socket's packet with a
// wrong checksum comes through as it was, not vouched for. Without offload
// nothing is vouched for.
func TestReadValidatedFollowsTheKernel(t *testing.T) {
	testenv.NeedRoot(t, "a TUN device in a fresh network namespace")
	eachUDPDevice(t, "tscsum0", func(dev *Device, sock net.Conn, offload bool) {
		if v, ok := dev.vnet.(vnetFile); offload && (!ok || v.rc == nil) {
			// wireguard-go's descriptor is non-blocking: reads and
			// writes below go through vnetFile.raw.
			t.Errorf("the vnet descriptor is not read with raw system calls (%#v)", dev.vnet)
		}
		raw, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			t.Errorf("raw socket: %v", err)
			return
		}
		defer unix.Close(raw)
		// A UDP datagram 10.9.0.1:7 -> 10.9.0.2:9 whose checksum is wrong.
		bad := []byte{0x45, 0, 0, 33, 0, 1, 0, 0, 64, 17, 0, 0, 10, 9, 0, 1, 10, 9, 0, 2,
			0, 7, 0, 9, 0, 13, 0xde, 0xad, 'b', 'a', 'd', '!', '!'}
		binary.BigEndian.PutUint16(bad[10:], ^checksum.Checksum(bad[:20], 0))

		bufs, sizes, valid := newBufs(max(dev.BatchSize(), 1), 65535)
		seen := map[string]bool{}
		deadline := time.Now().Add(10 * time.Second)
		for len(seen) < 2 && time.Now().Before(deadline) {
			sock.Write([]byte("probe"))
			unix.Sendto(raw, bad, 0, &unix.SockaddrInet4{Addr: [4]byte{10, 9, 0, 2}})
			n, err := readValidatedWithTimeout(dev, bufs, sizes, valid, time.Second)
			if err != nil {
				continue
			}
			for j := range n {
				pkt := bufs[j][Headroom : Headroom+sizes[j]]
				if len(pkt) < 28 || pkt[0]>>4 != 4 || pkt[9] != unix.IPPROTO_UDP {
					continue
				}
				switch string(pkt[28:]) {
				case "probe":
					seen["probe"] = true
					if valid[j] != offload {
						t.Errorf("offload=%v: local datagram reported valid=%v", offload, valid[j])
					}
					if offload {
						transportValid(t, pkt, 20)
					}
				case "bad!!":
					seen["bad"] = true
					if valid[j] || !bytes.Equal(pkt, bad) {
						t.Errorf("offload=%v: raw packet valid=%v, changed %v", offload, valid[j], !bytes.Equal(pkt, bad))
					}
				}
			}
		}
		if len(seen) != 2 {
			t.Errorf("offload=%v: saw %v, want the probe and the bad packet", offload, seen)
		}
	})
}

func readValidatedWithTimeout(dev *Device, bufs [][]byte, sizes []int, valid []bool, d time.Duration) (int, error) {
	type res struct {
		n   int
		err error
	}
	c := make(chan res, 1)
	go func() {
		n, err := dev.ReadValidated(bufs, sizes, valid, Headroom)
		c <- res{n, err}
	}()
	select {
	case r := <-c:
		return r.n, r.err
	case <-time.After(d):
		r := <-c // let the Read finish before anyone reuses bufs
		return r.n, r.err
	}
}

// TestInterruptRead: InterruptRead makes a Read blocked in the poller,
// and one called afterwards, return at once with no packets and an error
// wrapping os.ErrDeadlineExceeded (stack.ReadInterrupter); a datagram
// queued before the interrupt is still read afterwards, and later Reads
// block again. With IFF_VNET_HDR the interrupted Read also hands the
// pages of the device's own 64 KiB read buffer back to the system.
func TestInterruptRead(t *testing.T) {
	testenv.NeedRoot(t, "a TUN device in a fresh network namespace")
	eachUDPDevice(t, "tsintr0", func(dev *Device, sock net.Conn, offload bool) {
		bufs, sizes, valid := newBufs(max(dev.BatchSize(), 1), 65535)
		// read reads until a datagram with payload want comes out, for
		// up to 10 s; the first error other than a timeout ends it.
		read := func(want string) error {
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				n, err := readValidatedWithTimeout(dev, bufs, sizes, valid, time.Second)
				if err != nil {
					return err
				}
				for j := range n {
					pkt := bufs[j][Headroom : Headroom+sizes[j]]
					if len(pkt) >= 28 && pkt[0]>>4 == 4 && pkt[9] == unix.IPPROTO_UDP && string(pkt[28:]) == want {
						return nil
					}
				}
			}
			return errors.New("timed out")
		}
		// The path works: the kernel routes into the TUN.
		sock.Write([]byte("warm"))
		if err := read("warm"); err != nil {
			t.Errorf("offload=%v: first datagram: %v", offload, err)
			return
		}
		if offload && testenv.ResidentPagesOf(t, dev.readBuf) == 0 {
			t.Errorf("the read buffer has no resident page after a read: the check below sees nothing")
		}

		// A Read blocked in the poller. A stray packet (the kernel's
		// IPv6 router solicitation) may end it first: the reads go on
		// until one fails.
		got := make(chan error, 1)
		go func() {
			for i := 0; ; i++ {
				n, err := dev.ReadValidated(bufs, sizes, valid, Headroom)
				if err != nil || i == 100 {
					if n != 0 {
						err = errors.Join(err, errors.New("packets returned"))
					}
					got <- err
					return
				}
			}
		}()
		time.Sleep(50 * time.Millisecond) // usually blocked by now; either way it must return
		if err := dev.InterruptRead(); err != nil {
			t.Errorf("offload=%v: InterruptRead: %v", offload, err)
			return
		}
		select {
		case err := <-got:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("offload=%v: interrupted Read returned %v, want os.ErrDeadlineExceeded", offload, err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("offload=%v: InterruptRead did not wake the blocked Read", offload)
			dev.Close()
			<-got
			return
		}
		if offload && testenv.ResidentPagesOf(t, dev.readBuf) != 0 {
			t.Errorf("%d pages of the read buffer resident after the interrupted read", testenv.ResidentPagesOf(t, dev.readBuf))
		}

		// A datagram waiting, then an interrupt: the next Read
		// returns nothing, and the datagram comes after.
		sock.Write([]byte("kept"))
		if err := dev.InterruptRead(); err != nil {
			t.Errorf("InterruptRead: %v", err)
			return
		}
		if n, err := dev.ReadValidated(bufs, sizes, valid, Headroom); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("offload=%v: Read after InterruptRead: %d packets, %v; want none and os.ErrDeadlineExceeded", offload, n, err)
		}
		if err := read("kept"); err != nil {
			t.Errorf("offload=%v: the datagram queued before the interrupt: %v", offload, err)
		}

		// The same through ReadWhole, which the stack's reader uses
		// with offload: the interrupted read clears the deadline, so
		// the next one waits for and returns the datagram (a deadline
		// left in the past would fail every read at once).
		sock.Write([]byte("whole"))
		if err := dev.InterruptRead(); err != nil {
			t.Errorf("InterruptRead: %v", err)
			return
		}
		big := make([]byte, WholeReadSize)
		if n, _, _, err := dev.ReadWhole(big, bufs, sizes, valid, Headroom); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("offload=%v: ReadWhole after InterruptRead: %d packets, %v; want none and os.ErrDeadlineExceeded", offload, n, err)
		}
		for i := 0; ; i++ {
			n, _, _, err := dev.ReadWhole(big, bufs, sizes, valid, Headroom)
			if err != nil {
				t.Errorf("offload=%v: ReadWhole after the interrupted one: %v", offload, err)
				break
			}
			if j := slices.IndexFunc(sizes[:n], func(sz int) bool { return sz >= 33 }); j >= 0 && string(bufs[j][Headroom+28:Headroom+sizes[j]]) == "whole" {
				break
			}
			if i == 100 {
				t.Errorf("offload=%v: the datagram queued before the interrupt never came through ReadWhole", offload)
				break
			}
		}
	})
}

// TestWriteGSOVec: a packet handed to WriteGSOVec in pieces (virtio
// header, IP header, payload split across views, as the stack's writer
// passes them) reaches the kernel as the one packet they make up: a
// socket in the namespace receives the datagram whole.
func TestWriteGSOVec(t *testing.T) {
	testenv.NeedRoot(t, "a TUN device in a fresh network namespace")
	inNetns(t, func(nl *netlink.Handle) {
		dev, err := Open(context.Background(), Config{Name: "tsvec0", FD: NoFD, Addrs: []netip.Prefix{netip.MustParsePrefix("10.9.0.1/24")}, MTU: 1500, Offload: true})
		if err != nil {
			t.Errorf("Open: %v", err)
			return
		}
		defer dev.Close()
		if dev.GSOMaxSize() == 0 {
			t.Error("the device takes no GSO writes")
			return
		}
		pc, err := net.ListenPacket("udp4", "10.9.0.1:9")
		if err != nil {
			t.Errorf("listen: %v", err)
			return
		}
		defer pc.Close()
		payload := make([]byte, 1200)
		for i := range payload {
			payload[i] = byte(i * 7)
		}
		// 10.9.0.2:7 -> 10.9.0.1:9, UDP checksum 0 (none).
		ip := []byte{0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0, 10, 9, 0, 2, 10, 9, 0, 1}
		binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
		binary.BigEndian.PutUint16(ip[10:], ^checksum.Checksum(ip, 0))
		udp := []byte{0, 7, 0, 9, 0, 0, 0, 0}
		binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
		vnet := make([]byte, VnetHdrLen) // no offload asked for
		if err := dev.WriteGSOVec([][]byte{vnet, ip, udp, payload[:500], payload[500:]}); err != nil {
			t.Errorf("WriteGSOVec: %v", err)
			return
		}
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2000)
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Errorf("the datagram written in pieces never arrived: %v", err)
			return
		}
		if !bytes.Equal(buf[:n], payload) {
			t.Errorf("received %d bytes, not the %d-byte payload written in pieces", n, len(payload))
		}
		// A download writes a segment this way every ~64 KiB: no
		// allocation per write (unix.Writev allocated its iovecs, and
		// the poller callback its closure, every time).
		pieces := [][]byte{vnet, ip, udp, payload[:500], payload[500:]}
		if a := testing.AllocsPerRun(100, func() {
			if err := dev.WriteGSOVec(pieces); err != nil {
				t.Errorf("WriteGSOVec: %v", err)
			}
		}); a != 0 {
			t.Errorf("WriteGSOVec allocates %v times a call, want 0", a)
		}
	})
}

// TestReadWaits: with a virtio header (offload) the device counts the
// reads that found nothing and waited in the poller
// (stack.WaitCountingDevice), and only those: reading packets already
// queued adds nothing, a read that has to wait for the next packet adds
// at least one. Without the header it cannot tell, and says so.
func TestReadWaits(t *testing.T) {
	testenv.NeedRoot(t, "a TUN device in a fresh network namespace")
	eachUDPDevice(t, "tswait0", func(dev *Device, sock net.Conn, offload bool) {
		if _, ok := dev.ReadWaits(); ok != offload {
			t.Errorf("offload=%v: ReadWaits says it counts: %v", offload, ok)
			return
		}
		if !offload {
			return
		}
		bufs, sizes, valid := newBufs(max(dev.BatchSize(), 1), 65535)
		// readUntil reads until a datagram with payload want comes
		// out (stray packets, such as the kernel's IPv6 router
		// solicitations, may come first).
		readUntil := func(want string) error {
			for {
				n, err := dev.ReadValidated(bufs, sizes, valid, Headroom)
				if err != nil {
					return err
				}
				for j := range n {
					pkt := bufs[j][Headroom : Headroom+sizes[j]]
					if len(pkt) >= 28 && pkt[0]>>4 == 4 && pkt[9] == unix.IPPROTO_UDP && string(pkt[28:]) == want {
						return nil
					}
				}
			}
		}
		// Queued before the reads: none of them waits.
		sock.Write([]byte("queued"))
		before, _ := dev.ReadWaits()
		if err := readUntil("queued"); err != nil {
			t.Errorf("read: %v", err)
			return
		}
		if after, _ := dev.ReadWaits(); after != before {
			t.Errorf("reading a queued datagram counted %d waits, want none", after-before)
		}
		// Sent once a read waits for it.
		got := make(chan error, 1)
		go func() { got <- readUntil("later") }()
		deadline := time.Now().Add(10 * time.Second)
		for {
			if w, _ := dev.ReadWaits(); w > before {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("a read with nothing queued counted no wait in 10 s")
				dev.Close()
				<-got
				return
			}
			time.Sleep(time.Millisecond)
		}
		sock.Write([]byte("later"))
		select {
		case err := <-got:
			if err != nil {
				t.Errorf("read: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("the waiting read did not get the datagram")
			dev.Close()
			<-got
		}
	})
}

// eachUDPDevice runs fn twice, with offload and without, each time in a
// fresh namespace with TUN name open there (10.9.0.1/24, MTU 1500) and a
// UDP socket sending through it to 10.9.0.2:9; it closes both after fn.
// A device or socket that cannot be opened is reported and fn not run.
func eachUDPDevice(t *testing.T, name string, fn func(dev *Device, sock net.Conn, offload bool)) {
	t.Helper()
	for _, offload := range []bool{true, false} {
		inNetns(t, func(*netlink.Handle) {
			dev, err := Open(context.Background(), Config{Name: name, FD: NoFD, Addrs: []netip.Prefix{netip.MustParsePrefix("10.9.0.1/24")}, MTU: 1500, Offload: offload})
			if err != nil {
				t.Errorf("offload=%v: Open: %v", offload, err)
				return
			}
			defer dev.Close()
			sock, err := net.Dial("udp", "10.9.0.2:9")
			if err != nil {
				t.Errorf("offload=%v: dial: %v", offload, err)
				return
			}
			defer sock.Close()
			fn(dev, sock, offload)
		})
	}
}
