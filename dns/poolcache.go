package dns

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The cache file is text, one mapping a line, least recently used first:
//
//	# tunsocks fake-ip cache v1
//	198.18.0.2 example.com 1735689600
//
// address, name, and the Unix time it was last used.
const (
	cacheHeader  = "# tunsocks fake-ip cache v1"
	maxCacheFile = 64 << 20 // far above 2*MaxPoolSize lines of 253-byte names
)

// load reads p.cacheFile into the (empty) pool.
func (p *Pool) load() error {
	f, err := os.Open(p.cacheFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dns: fake-ip cache: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCacheFile+1))
	if err != nil {
		return fmt.Errorf("dns: fake-ip cache: read %s: %w", p.cacheFile, err)
	}
	if len(data) > maxCacheFile {
		p.log.Warn("fake-ip cache file too large; ignoring it", "file", p.cacheFile, "limit", maxCacheFile)
		return nil
	}
	now := p.now()
	var loaded, skipped int
	var firstErr error
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		if err := p.loadLine(line, now); err != nil {
			skipped++
			if firstErr == nil {
				firstErr = fmt.Errorf("line %d: %w", i+1, err)
			}
			continue
		}
		loaded++
	}
	if skipped > 0 {
		p.log.Warn("fake-ip cache: skipped corrupt or stale entries",
			"file", p.cacheFile, "skipped", skipped, "loaded", loaded, "first", firstErr)
	}
	return nil
}

// loadLine adds one cache line's mapping, most recently used so far.
func (p *Pool) loadLine(line string, now time.Time) error {
	fields := strings.Fields(line)
	if len(fields) != 3 {
		return fmt.Errorf("want 3 fields, have %d", len(fields))
	}
	a, err := netip.ParseAddr(fields[0])
	if err != nil {
		return err
	}
	a = a.Unmap()
	f := p.v4
	if a.Is6() {
		f = p.v6
	}
	if f == nil || a.Zone() != "" || a.Less(f.first) || f.last.Less(a) {
		return fmt.Errorf("address %s is outside the pool", fields[0])
	}
	host, ok := canonicalHost(fields[1])
	if !ok {
		return fmt.Errorf("invalid name %q", fields[1])
	}
	sec, err := strconv.ParseInt(fields[2], 10, 64)
	if err != nil || sec < 0 {
		return fmt.Errorf("invalid time %q", fields[2])
	}
	used := time.Unix(sec, 0)
	if used.After(now) {
		used = now
	}
	if f.byAddr[a] != nil || f.byHost[host] != nil {
		return fmt.Errorf("duplicate mapping %s %s", a, host)
	}
	e := newEntry(host, a, used)
	f.byAddr[a] = e
	f.byHost[host] = e
	f.lru.ToFront(&e.node)
	return nil
}

// Save writes the mappings to the cache file atomically (a temporary file in
// the same directory, renamed over the old one). It does nothing when the
// pool has no cache file.
func (p *Pool) Save() error {
	if p.cacheFile == "" {
		return nil
	}
	p.saveMu.Lock()
	defer p.saveMu.Unlock()

	var b strings.Builder
	b.WriteString(cacheHeader)
	b.WriteByte('\n')
	p.mu.Lock()
	for _, f := range []*family{p.v4, p.v6} {
		if f == nil {
			continue
		}
		// Least recently used first: the free mappings, then the ones in
		// their grace period, then the ones flows hold.
		var inUse []*entry
		for _, e := range f.byAddr {
			if e.state == held {
				inUse = append(inUse, e)
			}
		}
		slices.SortFunc(inUse, func(a, b *entry) int { return a.used.Compare(b.used) })
		for _, e := range slices.Concat(slices.Collect(f.lru.OldestFirst()), slices.Collect(f.grace.OldestFirst()), inUse) {
			b.WriteString(e.addr.String())
			b.WriteByte(' ')
			b.WriteString(e.host)
			b.WriteByte(' ')
			b.WriteString(strconv.FormatInt(e.used.Unix(), 10))
			b.WriteByte('\n')
		}
	}
	p.mu.Unlock()

	dir, base := filepath.Split(p.cacheFile)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, base+".tmp*")
	if err != nil {
		return fmt.Errorf("dns: save fake-ip cache: %w", err)
	}
	w := bufio.NewWriter(tmp)
	_, err = w.WriteString(b.String())
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), p.cacheFile)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("dns: save fake-ip cache %s: %w", p.cacheFile, err)
	}
	return nil
}
