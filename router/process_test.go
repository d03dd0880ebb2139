package router

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/rules"
	"github.com/tunsocks/tunsocks/stack"
	"github.com/tunsocks/tunsocks/stack/stacktest"
	"github.com/tunsocks/tunsocks/tun/tuntest"
)

// TestFlowRecordCarriesProcess: the process a decision looked up (a
// PROCESS-NAME rule, or exec's inbound) is in the flow's record, for the
// logs and the API, for TCP and UDP flows.
func TestFlowRecordCarriesProcess(t *testing.T) {
	decide := func(m *rules.Metadata) Decision {
		m.Process, m.UID = "/usr/bin/curl", 1000
		return Decision{Action: Reject, Rule: "PROCESS-NAME,curl,REJECT"}
	}
	r, flows := newRouter(t, decide, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dev, peer := tuntest.NewPipe(1500)
	st, err := stack.New(ctx, stack.Config{Device: dev, Handler: r.Handler(Inbound{Type: rules.InExec, Name: "exec:curl"})})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	appAddr := netip.MustParsePrefix("10.0.0.2/24")
	app, err := stacktest.NewApp(peer, appAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	if _, err := app.DialTCP(ctx, netip.MustParseAddrPort("192.0.2.1:80")); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial through a REJECT rule: %v", err)
	}
	pc, err := app.ListenUDP(netip.AddrPortFrom(appAddr.Addr(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.1:7"))); err != nil {
		t.Fatal(err)
	}
	// The TCP flow's record may come after the UDP one's: the app sees the
	// refusal before the router records it.
	seen := map[string]bool{}
	for len(seen) < 2 {
		select {
		case rec := <-flows:
			if seen[rec.Network] || rec.Process != "/usr/bin/curl" || rec.InName != "exec:curl" {
				t.Errorf("flow record %+v, want one tcp and one udp, process /usr/bin/curl from exec:curl", rec)
			}
			seen[rec.Network] = true
		case <-ctx.Done():
			t.Fatalf("flow records of %v only, want tcp and udp", seen)
		}
	}
	if !seen["tcp"] || !seen["udp"] {
		t.Errorf("flow records of %v, want tcp and udp", seen)
	}
}
