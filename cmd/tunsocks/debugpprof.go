package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
)

// startPprof serves profiles of the running process on addr until ctx is
// done (hidden flag --pprof, for scripts/bench.sh): GET /debug/pprof/NAME
// writes the runtime/pprof profile NAME (heap, goroutine, allocs, ...);
// ?gc=1 collects garbage first, so a heap profile shows what is live;
// ?debug=N as for pprof.Profile.WriteTo; GET /debug/memstats prints the
// runtime's memory statistics and its /memory/classes/ metrics. It is a local debugging aid: bind
// it to a loopback address.
func startPprof(ctx context.Context, addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return usagef("--pprof %s: %v", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/memstats", func(w http.ResponseWriter, r *http.Request) {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		fmt.Fprintf(w, "goroutines %d\nheap_inuse %d\nheap_idle %d\nheap_released %d\nstack_inuse %d\nsys %d\nnum_gc %d\n",
			runtime.NumGoroutine(), m.HeapInuse, m.HeapIdle, m.HeapReleased, m.StackInuse, m.Sys, m.NumGC)
		// Where every mapped byte is, by the runtime's own classes
		// (heap objects, stacks, span and GC metadata, ...).
		var samples []metrics.Sample
		for _, d := range metrics.All() {
			if strings.HasPrefix(d.Name, "/memory/classes/") {
				samples = append(samples, metrics.Sample{Name: d.Name})
			}
		}
		metrics.Read(samples)
		for _, s := range samples {
			if s.Value.Kind() == metrics.KindUint64 {
				fmt.Fprintf(w, "%s %d\n", s.Name, s.Value.Uint64())
			}
		}
	})
	mux.HandleFunc("GET /debug/pprof/{name}", func(w http.ResponseWriter, r *http.Request) {
		p := pprof.Lookup(r.PathValue("name"))
		if p == nil {
			http.Error(w, fmt.Sprintf("no profile %q", r.PathValue("name")), http.StatusNotFound)
			return
		}
		if r.URL.Query().Get("gc") == "1" {
			runtime.GC()
		}
		debug, _ := strconv.Atoi(r.URL.Query().Get("debug"))
		w.Header().Set("Content-Type", "application/octet-stream")
		if err := p.WriteTo(w, debug); err != nil {
			log.Warn("pprof", "profile", p.Name(), "err", err)
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("pprof listener stopped", "err", err)
		}
	}()
	context.AfterFunc(ctx, func() { srv.Close() })
	log.Info("serving profiles", "addr", ln.Addr().String())
	return nil
}

// sampleAllocations stops the runtime's sampling of allocations for heap
// profiles unless profiles are served (--pprof): nothing else reads them.
// Each sampled allocation (one per 512 KiB allocated) with a call stack not
// seen before costs a record and writes a page of the runtime's 1.4 MiB
// hash of them: after 1,000 connections opened, about 0.3-0.5 MiB more
// resident memory that no one would ever read.
func sampleAllocations(profiles bool) {
	if !profiles {
		runtime.MemProfileRate = 0
	}
}
