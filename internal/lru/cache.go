package lru

import (
	"sync"
	"time"
)

// Cache maps keys to values that expire, holding at most a fixed number of
// them: a Put into a full cache evicts the least recently used entry. Get
// drops an expired entry it meets. It is safe for concurrent use; the clock
// is the caller's (every method takes now), so tests control it.
type Cache[K comparable, V any] struct {
	mu    sync.Mutex
	max   int
	items map[K]*entry[K, V]
	list  List[*entry[K, V]]
}

type entry[K comparable, V any] struct {
	key     K
	val     V
	expires time.Time
	node    Node[*entry[K, V]]
}

// NewCache returns a Cache of at most size entries (at least 1).
func NewCache[K comparable, V any](size int) *Cache[K, V] {
	c := &Cache[K, V]{max: max(size, 1), items: make(map[K]*entry[K, V])}
	c.list.Init()
	return c
}

// Get returns the value stored under key, unless it expired by now (it is
// then dropped), and marks it recently used.
func (c *Cache[K, V]) Get(key K, now time.Time) (v V, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.items[key]
	if e == nil {
		return v, false
	}
	if !now.Before(e.expires) {
		c.remove(e)
		return v, false
	}
	c.list.ToFront(&e.node)
	return e.val, true
}

// Put stores v under key until expires, replacing what was there, and
// evicts the least recently used entry when the cache is full.
func (c *Cache[K, V]) Put(key K, v V, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.items[key]; e != nil {
		e.val, e.expires = v, expires
		c.list.ToFront(&e.node)
		return
	}
	if len(c.items) >= c.max {
		c.remove(c.list.Oldest().Val)
	}
	e := &entry[K, V]{key: key, val: v, expires: expires}
	e.node.Val = e
	c.items[key] = e
	c.list.ToFront(&e.node)
}

// Delete drops key's entry, if any.
func (c *Cache[K, V]) Delete(key K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.items[key]; e != nil {
		c.remove(e)
	}
}

// Len returns the number of entries, expired ones not yet dropped included.
func (c *Cache[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.items)
}

func (c *Cache[K, V]) remove(e *entry[K, V]) {
	delete(c.items, e.key)
	c.list.Remove(&e.node)
}
