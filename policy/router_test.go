package policy

import (
	"context"
	"errors"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/rules"
	"github.com/tunsocks/tunsocks/stack"
	"github.com/tunsocks/tunsocks/stack/stacktest"
	"github.com/tunsocks/tunsocks/tun/tuntest"
)

// TestPolicyDecidesTheRoutersFlows: a TUN flow to a fake IP is dialed by
// name through the outbound its name's rule picks, one to an address DNS
// answered for a DIRECT name by that name's rule (and its address), and
// a rejected name never dials.
func TestPolicyDecidesTheRoutersFlows(t *testing.T) {
	e := newEnv(t, "DOMAIN-SUFFIX,blocked.test,REJECT\nDOMAIN-SUFFIX,corp.test,corp\nDOMAIN,www.direct.test,DIRECT\nMATCH,corp\n", nil)
	flows := make(chan router.FlowRecord, 8)
	rt, err := router.New(router.Config{Decide: e.p.Decide, ReverseHost: e.p.ReverseHost, RealHost: e.p.RealHost,
		OnFlow: func(r router.FlowRecord) { flows <- r }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dev, peer := tuntest.NewPipe(1500)
	st, err := stack.New(ctx, stack.Config{Device: dev, Handler: rt.Handler(router.Inbound{Type: rules.InTUN, Name: "tun0"})})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	app, err := stacktest.NewApp(peer, netip.MustParsePrefix("10.0.0.2/24"))
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()

	srv := newDNS(t, e, "192.0.2.80")
	srv.Handle(ctx, query(t, "www.direct.test.", 1)) // teaches the real-name table

	for _, tc := range []struct {
		dst      netip.AddrPort
		out      *fakeOut // nil: nothing dials
		dialed   string
		outbound string
	}{
		{netip.AddrPortFrom(e.pool.Lookup("git.corp.test", false), 443), e.corp, "tcp git.corp.test:443", "corp"},
		{netip.MustParseAddrPort("192.0.2.80:80"), e.direct, "tcp 192.0.2.80:80", "DIRECT"},
		{netip.AddrPortFrom(e.pool.Lookup("ads.blocked.test", false), 443), nil, "", "REJECT"},
	} {
		_, err := app.DialTCP(ctx, tc.dst)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("%s: %v, want refused (the fake outbounds never connect)", tc.dst, err)
		}
		rec := testenv.Recv(t, flows, "the flow's record")
		if rec.Outbound != tc.outbound || rec.InType != "tun" || rec.InName != "tun0" {
			t.Errorf("%s: flow record %+v, want outbound %s from tun0", tc.dst, rec, tc.outbound)
		}
		if tc.out != nil {
			if got := tc.out.calls(); len(got) == 0 || got[len(got)-1] != tc.dialed {
				t.Errorf("%s: %s dialed %v, want %s", tc.dst, tc.out.name, got, tc.dialed)
			}
		}
	}
	if n := len(e.corp.calls()) + len(e.direct.calls()); n != 2 {
		t.Errorf("%d dials in all, want 2 (none for the rejected name)", n)
	}
}
