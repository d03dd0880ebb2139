package main

import (
	"runtime"
	"time"

	"github.com/tunsocks/tunsocks/api"
	"github.com/tunsocks/tunsocks/dns"
	"github.com/tunsocks/tunsocks/metrics"
	"github.com/tunsocks/tunsocks/stack"
)

// registerProcessMetrics: build information, start time, goroutines.
func registerProcessMetrics(reg *metrics.Registry, start time.Time) {
	reg.GaugeFunc("tunsocks_build_info", "tunsocks' version and the Go version it was built with; the value is 1.",
		[]string{"version", "goversion"}, func(emit metrics.Emit) { emit(1, versionString(), runtime.Version()) })
	reg.GaugeFunc("process_start_time_seconds", "When the process started (Unix time).", nil,
		func(emit metrics.Emit) { emit(float64(start.UnixNano()) / 1e9) })
	reg.GaugeFunc("go_goroutines", "Goroutines that exist now.", nil,
		func(emit metrics.Emit) { emit(float64(runtime.NumGoroutine())) })
}

// dnsMetrics counts DNS queries by type and answer kind; its observe is
// the DNS server's Observe.
func dnsMetrics(reg *metrics.Registry) (observe func(qtype, answer string)) {
	c := reg.Counter("tunsocks_dns_queries_total",
		"DNS queries tunsocks answered, by type and answer: fakeip (from the pool), real (forwarded), nxdomain, error.",
		"qtype", "answer")
	return func(qtype, answer string) { c.With(qtype, answer).Inc() }
}

// registerPoolMetrics reports the fake-IP pool's use.
func registerPoolMetrics(reg *metrics.Registry, pool *dns.Pool) {
	reg.GaugeFunc("tunsocks_fakeip_pool_used", "Fake IPs mapped to a name now, by address family.", []string{"family"},
		func(emit metrics.Emit) {
			v4, v6 := pool.Len()
			emit(float64(v4), "ipv4")
			if _, c6 := pool.Cap(); c6 > 0 {
				emit(float64(v6), "ipv6")
			}
		})
	reg.GaugeFunc("tunsocks_fakeip_pool_size", "Fake IPs the pool can map at once, by address family.", []string{"family"},
		func(emit metrics.Emit) {
			v4, v6 := pool.Cap()
			emit(float64(v4), "ipv4")
			if v6 > 0 {
				emit(float64(v6), "ipv6")
			}
		})
}

// registerStackMetrics reports the netstacks' packets, drops and errors
// (the TUN's and the WireGuard inbound's, added up); stacks lists them, nil
// for one not running.
func registerStackMetrics(reg *metrics.Registry, stacks func() []*stack.Stack) {
	sum := func() stack.Stats {
		var t stack.Stats
		for _, st := range stacks() {
			if st == nil {
				continue
			}
			s := st.Stats()
			t.PacketsIn += s.PacketsIn
			t.PacketsOut += s.PacketsOut
			t.TxDrops += s.TxDrops
			t.UDPDrops += s.UDPDrops
			t.UDPRateLimited += s.UDPRateLimited
			t.BadChecksums += s.BadChecksums
			t.RxDrops += s.RxDrops
			t.RxLost += s.RxLost
			t.RxErrors += s.RxErrors
			t.TxErrors += s.TxErrors
			t.TCPShed += s.TCPShed
			t.TCPHandshakeTimeouts += s.TCPHandshakeTimeouts
			t.UDPEvicted += s.UDPEvicted
		}
		return t
	}
	reg.CounterFunc("tunsocks_tun_packets_total", "Packets read from (in) and written to (out) the devices (TUN, WireGuard).", []string{"direction"},
		func(emit metrics.Emit) {
			s := sum()
			emit(float64(s.PacketsIn), "in")
			emit(float64(s.PacketsOut), "out")
		})
	reg.CounterFunc("tunsocks_tun_dropped_packets_total",
		"Packets dropped, by reason: tx_queue_full (the device's write queue), udp_queue_full (a UDP flow's queue), "+
			"udp_rate_limited (new flows beyond the rate), bad_checksum, malformed (neither IPv4 nor IPv6, or rejected by the netstack), lost (by the device).",
		[]string{"reason"}, func(emit metrics.Emit) {
			s := sum()
			emit(float64(s.TxDrops), "tx_queue_full")
			emit(float64(s.UDPDrops), "udp_queue_full")
			emit(float64(s.UDPRateLimited), "udp_rate_limited")
			emit(float64(s.BadChecksums), "bad_checksum")
			emit(float64(s.RxDrops), "malformed")
			emit(float64(s.RxLost), "lost")
		})
	reg.CounterFunc("tunsocks_tun_errors_total", "Device read and write errors.", []string{"op"},
		func(emit metrics.Emit) {
			s := sum()
			emit(float64(s.RxErrors), "read")
			emit(float64(s.TxErrors), "write")
		})
	reg.CounterFunc("tunsocks_flows_shed_total",
		"Flows the netstack gave up to admit newer ones, by reason: tcp_in_flight (connection attempts over the limit), "+
			"tcp_handshake_timeout, udp_evicted (UDP flows over the limit).", []string{"reason"},
		func(emit metrics.Emit) {
			s := sum()
			emit(float64(s.TCPShed), "tcp_in_flight")
			emit(float64(s.TCPHandshakeTimeouts), "tcp_handshake_timeout")
			emit(float64(s.UDPEvicted), "udp_evicted")
		})
}

// registerLogMetrics reports /logs records its subscribers lost.
func registerLogMetrics(reg *metrics.Registry, hub *api.LogHub) {
	reg.CounterFunc("tunsocks_api_log_records_dropped_total", "Log records a /logs subscriber was too slow to take.", nil,
		func(emit metrics.Emit) { emit(float64(hub.Dropped())) })
}
