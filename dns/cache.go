package dns

import (
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// cache holds forwarded answers, bounded in count, least recently used
// evicted first. Stored messages are never modified.
type cache struct {
	mu    sync.Mutex
	max   int
	items map[string]*centry
	lru   lruList[*centry]
}

type centry struct {
	key    string
	msg    *dnsmessage.Message
	stored time.Time
	ttl    time.Duration
	node   lruNode[*centry]
}

func newCache(max int) *cache {
	c := &cache{max: max, items: make(map[string]*centry)}
	c.lru.init()
	return c
}

// get returns the message stored under key, how long ago it was stored and
// its lifetime, unless it has expired (then it is dropped).
func (c *cache) get(key string, now time.Time) (m *dnsmessage.Message, elapsed, ttl time.Duration, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.items[key]
	if e == nil {
		return nil, 0, 0, false
	}
	elapsed = max(now.Sub(e.stored), 0)
	if elapsed >= e.ttl {
		c.remove(e)
		return nil, 0, 0, false
	}
	c.lru.toFront(&e.node)
	return e.msg, elapsed, e.ttl, true
}

// put stores m under key for ttl, evicting the least recently used entry
// when full.
func (c *cache) put(key string, m *dnsmessage.Message, now time.Time, ttl time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.items[key]; e != nil {
		c.remove(e)
	}
	if old := c.lru.oldest(); old != nil && len(c.items) >= c.max {
		c.remove(old.val)
	}
	e := &centry{key: key, msg: m, stored: now, ttl: ttl}
	e.node.val = e
	c.items[key] = e
	c.lru.toFront(&e.node)
}

// Len returns the number of entries, expired ones included.
func (c *cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.items)
}

func (c *cache) remove(e *centry) {
	delete(c.items, e.key)
	c.lru.remove(&e.node)
}
