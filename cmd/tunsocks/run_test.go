package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/config"
	"github.com/tunsocks/tunsocks/internal/memtrim"
	"github.com/tunsocks/tunsocks/internal/testenv"
)

// TestRunLimitUsageErrors: the limit flags are checked before anything
// starts (no TUN is needed to see these errors).
func TestRunLimitUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--max-memory", "lots"}, `--max-memory: size "lots": want a number of bytes, or one with a unit like 512MiB`},
		{[]string{"--max-memory", "1MiB"}, "max-memory 1048576 bytes: want at least 64MiB, or 0 for none"},
		{[]string{"--udp-max-flows", "0"}, "--udp-max-flows 0: want a positive number"},
		{[]string{"--tcp-max-in-flight", "-5"}, "--tcp-max-in-flight -5: want a positive number"},
		{[]string{"--tcp-handshake-timeout", "0s"}, "--tcp-handshake-timeout 0s: want a positive duration"},
		{[]string{"--udp-flow-rate", "10", "--udp-flow-rate-per-source", "20"}, "udp-flow-rate-per-source 20 exceeds udp-flow-rate 10"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr testenv.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
			defer cancel()
			code := run(ctx, append([]string{"tunsocks", "run", "--proxy", "direct"}, tc.args...), &stdout, &stderr)
			if code != exitUsage || !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("exit %d, stderr:\n%s\nwant exit %d and %q", code, stderr.String(), exitUsage, tc.want)
			}
		})
	}
}

// TestStartupTrim: once started, the pipeline gives back what start-up
// alone needed (the executable's pages it touched; see memtrim.Trim) and
// has the kernel map back only the pages of the executable it reads (no
// fault-around: memtrim.NoFaultAround) until it stops, unless
// --memtrim=false asked it to leave memory alone. Run unprivileged as
// 'tunsocks wg'.
func TestStartupTrim(t *testing.T) {
	// Whether this kernel can turn fault-around off.
	nfa := false
	if c, err := memtrim.NoFaultAround(); err == nil {
		c.Close()
		nfa = true
	} else {
		t.Logf("no fault-around control here: %v", err)
	}
	for _, noTrim := range []bool{false, true} {
		t.Run(fmt.Sprintf("noTrim=%v", noTrim), func(t *testing.T) {
			cfg := config.Default()
			cfg.Proxy = "direct"
			cfg.SummaryInterval = 0
			cfg.WireGuard = config.DefaultWireGuard()
			cfg.WireGuard.Listen = netip.MustParseAddrPort("127.0.0.1:0")
			cfg.WireGuard.State = filepath.Join(t.TempDir(), "wg.json")
			cfg.WireGuard.Peers = []string{"pixel"}
			cfg.WireGuard.QR = false
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			var out, logs testenv.Buffer
			log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- runPipeline(ctx, cfg, log, pipelineHooks{noTUN: true, stdout: &out, noTrim: noTrim}) }()
			trimmed := regexp.MustCompile(`msg="start-up memory trimmed" code_unmapped=([0-9]+) err=<nil>`)
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(logs.String(), `msg="tunsocks running"`) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if !noTrim {
				for trimmed.FindString(logs.String()) == "" && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
			}
			running := registeredExe(t)
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("runPipeline: %v\n%s", err, logs.String())
			}
			if want := nfa && !noTrim; (running > 0) != want {
				t.Errorf("%d mappings of the executable registered against fault-around while running, want them registered: %v", running, want)
			}
			if n := registeredExe(t); n != 0 {
				t.Errorf("%d mappings of the executable still registered after the run", n)
			}
			m := trimmed.FindStringSubmatch(logs.String())
			switch {
			case noTrim && strings.Contains(logs.String(), "start-up memory trimmed"):
				t.Errorf("trimmed with noTrim:\n%s", logs.String())
			case !noTrim && m == nil:
				t.Errorf("no start-up trim logged:\n%s", logs.String())
			case !noTrim && m[1] == "0" && runtime.GOOS == "linux":
				t.Errorf("the start-up trim unmapped nothing:\n%s", logs.String())
			}
		})
	}
}

// registeredExe counts the mappings of the executable registered with a
// userfaultfd (VmFlags "uw" in /proc/self/smaps), as
// memtrim.NoFaultAround registers them; 0 outside Linux.
func registeredExe(t *testing.T) int {
	t.Helper()
	if runtime.GOOS != "linux" {
		return 0
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	n, ours := 0, false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 5 && !strings.HasSuffix(f[0], ":"):
			ours = len(f) == 6 && f[5] == exe
		case ours && len(f) > 0 && f[0] == "VmFlags:" && slices.Contains(f[1:], "uw"):
			n++
		}
	}
	return n
}

type systemFamilies [2]bool

func (f systemFamilies) SystemTCPFamilies() (v4, v6 bool) { return f[0], f[1] }

// TestTCPStackName: the startup line and the API's settings name the TCP
// stack of each family: a family whose system TCP self-test failed is
// named with gVisor, and the other keeps "system".
func TestTCPStackName(t *testing.T) {
	both := []netip.Prefix{netip.MustParsePrefix("198.18.0.1/15"), netip.MustParsePrefix("fc00::1/18")}
	only4 := both[:1]
	for _, tc := range []struct {
		stack string
		addrs []netip.Prefix
		on    systemFamilies
		want  string
	}{
		{"gvisor", both, systemFamilies{}, "gvisor"},
		{"system", both, systemFamilies{true, true}, "system"},
		{"system", only4, systemFamilies{true, false}, "system"},
		{"system", both, systemFamilies{true, false}, "system for IPv4, gvisor for IPv6 (system TCP unavailable for IPv6)"},
		{"system", both, systemFamilies{false, true}, "system for IPv6, gvisor for IPv4 (system TCP unavailable for IPv4)"},
		{"system", both, systemFamilies{}, "gvisor (system TCP unavailable)"},
		{"system", only4, systemFamilies{}, "gvisor (system TCP unavailable)"},
	} {
		cfg := config.Default()
		cfg.TCP.Stack, cfg.Tun.Addrs = tc.stack, tc.addrs
		if got := tcpStackName(cfg, tc.on); got != tc.want {
			t.Errorf("tcp-stack %s, addrs %v, system TCP on (IPv4, IPv6) %v: %q, want %q", tc.stack, tc.addrs, tc.on, got, tc.want)
		}
	}
}
