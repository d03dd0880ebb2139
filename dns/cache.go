package dns

import (
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/tunsocks/tunsocks/internal/lru"
)

// cache holds forwarded answers, bounded in count, least recently used
// evicted first. Stored messages are never modified.
type cache struct {
	c *lru.Cache[string, cached]
}

type cached struct {
	msg    *dnsmessage.Message
	stored time.Time
	ttl    time.Duration
}

func newCache(max int) *cache { return &cache{c: lru.NewCache[string, cached](max)} }

// get returns the message stored under key, how long ago it was stored and
// its lifetime, unless it has expired (then it is dropped).
func (c *cache) get(key string, now time.Time) (m *dnsmessage.Message, elapsed, ttl time.Duration, ok bool) {
	v, ok := c.c.Get(key, now)
	if !ok {
		return nil, 0, 0, false
	}
	return v.msg, max(now.Sub(v.stored), 0), v.ttl, true
}

// put stores m under key for ttl, evicting the least recently used entry
// when full.
func (c *cache) put(key string, m *dnsmessage.Message, now time.Time, ttl time.Duration) {
	c.c.Put(key, cached{msg: m, stored: now, ttl: ttl}, now.Add(ttl))
}

// Len returns the number of entries, expired ones included.
func (c *cache) Len() int { return c.c.Len() }
