package socksserver

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestServerHolds8000IdleRelays proves the capacity of the server under
// the 20,000-descriptor limit of the machines tunsocks is tested on:
// 8,000 CONNECT relays that have each carried a byte both ways and then
// fall idle, in a server process of its own, cost it two descriptors each.
// With a splice pipe held per idle direction (six each) the server ran out
// of descriptors near 3,300 relays.
func TestServerHolds8000IdleRelays(t *testing.T) {
	const relays = 8000
	// This process holds the clients' and the targets' ends: 16,000.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	if lim.Cur < 2*relays+500 {
		t.Skipf("the open-file limit is %d; this test needs %d here and in the server", lim.Cur, 2*relays+500)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", childEnv, relays))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdoutPipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	stdout := bufio.NewReader(stdoutPipe)
	line, err := stdout.ReadString('\n')
	if err != nil {
		t.Fatalf("server child: %v", err)
	}
	srvAddr := strings.TrimSpace(line)
	stats := func() Stats {
		t.Helper()
		io.WriteString(stdin, "stats\n")
		line, err := stdout.ReadString('\n')
		var st Stats
		if err == nil {
			err = json.Unmarshal([]byte(line), &st)
		}
		if err != nil {
			t.Fatalf("server child stats: %v", err)
		}
		return st
	}

	// The target accepts, answers each connection's byte and keeps it open.
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	targetAt := netip.MustParseAddrPort(target.Addr().String())
	var mu sync.Mutex
	var held []net.Conn
	t.Cleanup(func() {
		target.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	var acceptWG sync.WaitGroup
	acceptWG.Add(1)
	go func() {
		defer acceptWG.Done()
		b := make([]byte, 1)
		for {
			c, err := target.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(ioTimeout))
			if _, err := io.ReadFull(c, b); err == nil {
				c.Write([]byte("d"))
			}
			c.SetDeadline(time.Time{})
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	defer func() { target.Close(); acceptWG.Wait() }()

	// Clients from 127.0.0.2 (their ephemeral ports apart from the
	// server's own dials), eight at a time.
	request := append([]byte{5, 1, 0}, req5(1, targetAt)...)
	var wg sync.WaitGroup
	var failed sync.Once
	jobs := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{Timeout: ioTimeout, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
			reply := make([]byte, 2+10)
			for i := range jobs {
				err := func() error {
					c, err := d.Dial("tcp", srvAddr)
					if err != nil {
						return err
					}
					mu.Lock()
					held = append(held, c)
					mu.Unlock()
					c.SetDeadline(time.Now().Add(ioTimeout))
					if _, err := c.Write(request); err != nil {
						return err
					}
					if _, err := io.ReadFull(c, reply); err != nil {
						return err
					}
					if reply[3] != 0 {
						return fmt.Errorf("CONNECT reply 0x%02x", reply[3])
					}
					if _, err := c.Write([]byte("u")); err != nil {
						return err
					}
					if _, err := io.ReadFull(c, reply[:1]); err != nil || reply[0] != 'd' {
						return fmt.Errorf("the target's byte: %q, %v", reply[:1], err)
					}
					c.SetDeadline(time.Time{})
					return nil
				}()
				if err != nil {
					failed.Do(func() { t.Errorf("relay %d: %v", i, err) })
				}
			}
		}()
	}
	for i := range relays {
		if t.Failed() {
			break
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	st := stats()
	if st.Relays != relays || st.ConnLimited != 0 {
		t.Fatalf("server stats %+v: want %d relays and none refused", st, relays)
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	fds := len(ents)
	t.Logf("server process: %d descriptors for %d idle relays (%.2f per relay)", fds, relays, float64(fds)/relays)
	if fds > 2*relays+100 || fds > 20000 {
		t.Errorf("the server holds %d descriptors for %d idle relays; want at most 2 each and a few more (%d), under 20,000", fds, relays, 2*relays+100)
	}
}
