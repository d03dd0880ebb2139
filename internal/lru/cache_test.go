package lru

import (
	"sync"
	"testing"
	"time"
)

func TestCacheExpiresAndEvictsLeastRecentlyUsed(t *testing.T) {
	t0 := time.Unix(1000, 0)
	c := NewCache[string, int](3)
	c.Put("a", 1, t0.Add(10*time.Second))
	c.Put("b", 2, t0.Add(time.Second))
	c.Put("c", 3, t0.Add(10*time.Second))
	if v, ok := c.Get("b", t0); !ok || v != 2 {
		t.Fatalf("Get(b) = %d, %v before it expires", v, ok)
	}
	if _, ok := c.Get("b", t0.Add(time.Second)); ok {
		t.Fatal("Get(b) found it at its expiry time")
	}
	if c.Len() != 2 {
		t.Fatalf("Len = %d after an expired entry was met, want 2", c.Len())
	}
	c.Put("d", 4, t0.Add(10*time.Second))
	c.Get("a", t0) // a is now more recently used than c
	c.Put("e", 5, t0.Add(10*time.Second))
	if c.Len() != 3 {
		t.Fatalf("Len = %d, want the bound 3", c.Len())
	}
	if _, ok := c.Get("c", t0); ok {
		t.Error("c, the least recently used, survived a Put into a full cache")
	}
	for _, k := range []string{"a", "d", "e"} {
		if _, ok := c.Get(k, t0); !ok {
			t.Errorf("%s was evicted", k)
		}
	}
	c.Put("a", 10, t0.Add(time.Minute)) // replaces in place
	if v, _ := c.Get("a", t0.Add(30*time.Second)); v != 10 || c.Len() != 3 {
		t.Errorf("after replacing a: Get = %d, Len = %d", v, c.Len())
	}
	c.Delete("a")
	if _, ok := c.Get("a", t0); ok || c.Len() != 2 {
		t.Error("Delete left the entry")
	}
	if NewCache[int, int](0).max != 1 {
		t.Error("a cache of size 0 must still hold one entry")
	}
}

func TestCacheConcurrent(t *testing.T) {
	c := NewCache[int, int](16)
	now := time.Unix(0, 0)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				c.Put(g*1000+i, i, now.Add(time.Second))
				c.Get(g*1000+i/2, now)
			}
		}()
	}
	wg.Wait()
	if c.Len() != 16 {
		t.Fatalf("Len = %d, want 16", c.Len())
	}
}
