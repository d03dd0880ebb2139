package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tunsocks/tunsocks/config"
	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/internal/lab"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/socksserver"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "build a throwaway lab in network namespaces and show flows going through tunsocks",
		Description: "Needs root. Creates three network namespaces (app, proxy, remote), runs tunsocks' SOCKS server\n" +
			"on the proxy host, an HTTP and a UDP echo service on the remote host, and tunsocks itself on the\n" +
			"app host with the app host's default routes pointing at its TUN. Then it makes real requests from the\n" +
			"app host, prints every flow, and removes everything it made, also when interrupted.\n" +
			"The machine's own network is never touched.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "pcap", Usage: "also write the app host's TUN traffic to this pcap file"},
		},
		Action: func(c *cli.Context) error {
			if !c.IsSet("log-level") {
				// The demo's own report is the table; logs only for trouble.
				c.Set("log-level", "warn")
			}
			log, err := newLogger(c)
			if err != nil {
				return err
			}
			return runDemo(c.Context, c.App.Writer, log, c.String("pcap"))
		},
	}
}

// remote services of the demo
const (
	demoHTTPPort = 80
	demoEchoPort = 7
	demoSocks    = 1080
	demoTun      = "tsk0"
)

func runDemo(ctx context.Context, w io.Writer, log *slog.Logger, pcap string) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("demo builds network namespaces and a TUN device: run it as root (sudo)")
	}
	if removed, err := lab.CleanupStale(); err != nil {
		log.Warn("could not remove a stale lab", "err", err)
	} else if len(removed) > 0 {
		log.Info("removed namespaces left by an earlier crashed run", "namespaces", removed)
	}
	l, err := lab.New(lab.Options{})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		fmt.Fprintf(w, "\nremoved namespaces %s, %s, %s and every device in them\n", l.App, l.Proxy, l.Remote)
	}()
	fmt.Fprintf(w, "lab: app host %s, proxy host %s (SOCKS server %s), remote host %s (%s, %s)\n",
		l.App, l.Proxy, netip.AddrPortFrom(lab.ProxyDown4.Addr(), demoSocks), l.Remote, lab.Remote4.Addr(), lab.Remote6.Addr())

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	// Remote host: HTTP on v4 and v6, UDP echo on v4 and v6.
	if err := l.Do(l.Remote, func() error { return startRemoteServices(ctx, &wg) }); err != nil {
		return fmt.Errorf("remote services: %w", err)
	}
	// Proxy host: our SOCKS server, dialing from the proxy host.
	var ln net.Listener
	if err := l.Do(l.Proxy, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(lab.ProxyDown4.Addr(), demoSocks).String())
		return err
	}); err != nil {
		return fmt.Errorf("socks server: %w", err)
	}
	srv, err := socksserver.New(socksserver.Config{Dialer: &direct.Dialer{Netns: l.Proxy}, ClientPacketListener: &direct.Dialer{Netns: l.Proxy}, Logger: log.With("component", "socks-server")})
	if err != nil {
		return err
	}
	wg.Add(1)
	go func() { defer wg.Done(); srv.Serve(ctx, ln) }()

	// App host: tunsocks itself.
	var flows []router.FlowRecord
	var flowsMu sync.Mutex
	up := make(chan string, 1)
	cfg := config.Default()
	cfg.Proxy = "socks5://" + netip.AddrPortFrom(lab.ProxyDown4.Addr(), demoSocks).String()
	cfg.Tun.Name, cfg.Tun.Pcap = demoTun, pcap
	cfg.UDPIdle, cfg.DNSIdle, cfg.DialTimeout, cfg.SummaryInterval = 10*time.Second, 5*time.Second, 5*time.Second, 0
	if err := cfg.Validate(); err != nil {
		return err
	}
	pipeCtx, stopPipe := context.WithCancel(ctx)
	pipeErr := make(chan error, 1)
	go func() {
		pipeErr <- runPipeline(pipeCtx, cfg, log.With("component", "tunsocks"), pipelineHooks{
			inNetns: func(f func() error) error { return l.Do(l.App, f) },
			netns:   l.App,
			started: func(dev string) { up <- dev },
			onFlow: func(r router.FlowRecord) {
				flowsMu.Lock()
				flows = append(flows, r)
				flowsMu.Unlock()
			},
		})
	}()
	select {
	case dev := <-up:
		if err := l.RouteDefaultVia(dev, 5*time.Second); err != nil {
			stopPipe()
			<-pipeErr
			return err
		}
	case err := <-pipeErr:
		stopPipe()
		return fmt.Errorf("tunsocks did not start: %w", err)
	case <-ctx.Done():
		stopPipe()
		<-pipeErr
		return ctx.Err()
	}
	fmt.Fprintf(w, "tunsocks: TUN %s in %s, default routes (IPv4 and IPv6) point at it, upstream %s\n\n", demoTun, l.App, cfg.Proxy)

	// The app: requests from the app host, which knows nothing of proxies.
	app := &direct.Dialer{Netns: l.App, Timeout: 5 * time.Second}
	checks := []struct {
		name string
		run  func() (string, error)
	}{
		{"HTTP GET over IPv4", func() (string, error) {
			return httpGet(ctx, app, "http://"+lab.Remote4.Addr().String()+"/")
		}},
		{"HTTP GET over IPv6", func() (string, error) {
			return httpGet(ctx, app, "http://["+lab.Remote6.Addr().String()+"]/")
		}},
		{"HTTP GET of 4 MiB", func() (string, error) {
			return httpGet(ctx, app, "http://"+lab.Remote4.Addr().String()+"/bytes?n="+strconv.Itoa(4<<20))
		}},
		{"UDP echo over IPv4", func() (string, error) {
			return udpEcho(ctx, app, netip.AddrPortFrom(lab.Remote4.Addr(), demoEchoPort).String())
		}},
		{"UDP echo over IPv6", func() (string, error) {
			return udpEcho(ctx, app, netip.AddrPortFrom(lab.Remote6.Addr(), demoEchoPort).String())
		}},
		{"TCP to a closed port (refused at once)", func() (string, error) {
			start := time.Now()
			c, err := app.DialContext(ctx, "tcp", netip.AddrPortFrom(lab.Remote4.Addr(), 9).String())
			if err == nil {
				c.Close()
				return "", errors.New("connected to a port nobody listens on")
			}
			return fmt.Sprintf("refused after %v: %v", time.Since(start).Round(time.Millisecond), err), nil
		}},
	}
	failed := 0
	for _, ch := range checks {
		res, err := ch.run()
		if err != nil {
			failed++
			fmt.Fprintf(w, "FAIL  %-40s %v\n", ch.name, err)
		} else {
			fmt.Fprintf(w, "ok    %-40s %s\n", ch.name, res)
		}
	}
	// Let the last flows finish and be recorded, then stop tunsocks.
	time.Sleep(300 * time.Millisecond)
	stopPipe()
	if err := <-pipeErr; err != nil {
		log.Warn("tunsocks stopped with an error", "err", err)
	}

	flowsMu.Lock()
	defer flowsMu.Unlock()
	fmt.Fprintf(w, "\nflows through tunsocks:\n")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NET\tSOURCE\tDESTINATION\tOUTBOUND\tUP\tDOWN\tDURATION\tRESULT")
	for _, f := range flows {
		result := "ok"
		if f.Err != nil {
			result = f.Err.Error()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%v\t%s\n", f.Network, f.Src, f.Dst, f.Outbound, f.Up, f.Down, f.Duration.Round(time.Millisecond), result)
	}
	tw.Flush()
	if pcap != "" {
		fmt.Fprintf(w, "\npackets written to %s (open it with wireshark or tshark -r %s)\n", pcap, pcap)
	}
	if failed > 0 {
		return cli.Exit(fmt.Sprintf("%d of %d demo checks failed", failed, len(checks)), exitFailure)
	}
	fmt.Fprintf(w, "\nall %d checks passed\n", len(checks))
	return nil
}

func startRemoteServices(ctx context.Context, wg *sync.WaitGroup) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the remote host; you came from %s\n", r.RemoteAddr)
	})
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		n = min(max(n, 0), 1<<30)
		w.Header().Set("Content-Length", strconv.Itoa(n))
		buf := make([]byte, 32<<10)
		for n > 0 {
			k := min(n, len(buf))
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	for _, ip := range []netip.Addr{lab.Remote4.Addr(), lab.Remote6.Addr()} {
		ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, demoHTTPPort).String())
		if err != nil {
			return err
		}
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		wg.Add(2)
		go func() { defer wg.Done(); hs.Serve(ln) }()
		go func() { defer wg.Done(); <-ctx.Done(); hs.Close() }()

		pc, err := net.ListenPacket("udp", netip.AddrPortFrom(ip, demoEchoPort).String())
		if err != nil {
			return err
		}
		wg.Add(2)
		go func() { defer wg.Done(); lab.EchoUDP(pc) }()
		go func() { defer wg.Done(); <-ctx.Done(); pc.Close() }()
	}
	return nil
}

func httpGet(ctx context.Context, d *direct.Dialer, url string) (string, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s, %d bytes in %v", resp.Status, n, time.Since(start).Round(time.Millisecond)), nil
}

func udpEcho(ctx context.Context, d *direct.Dialer, addr string) (string, error) {
	c, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	msg := []byte("ping through tunsocks")
	buf := make([]byte, 1500)
	start := time.Now()
	for try := 0; try < 3; try++ {
		c.Write(msg)
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err == nil {
			if string(buf[:n]) != string(msg) {
				return "", fmt.Errorf("echo returned %q", buf[:n])
			}
			return fmt.Sprintf("%d bytes echoed in %v", n, time.Since(start).Round(time.Millisecond)), nil
		}
	}
	return "", errors.New("no echo after 3 tries")
}
