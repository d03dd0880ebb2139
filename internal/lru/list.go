// Package lru holds the one least-recently-used mechanism of tunsocks: an
// intrusive list (List) for owners that manage their own eviction (the
// fake-IP pool), and on it a bounded cache whose entries expire (Cache),
// used wherever answers are kept for a while: DNS answers, real names of
// addresses, process lookups, names a DIRECT UDP flow resolved.
package lru

import "iter"

// List orders values from most to least recently used. It is intrusive:
// each value owns the Node that links it, so moving a value to the front
// allocates nothing. Call Init before use; callers hold their own lock.
type List[T any] struct {
	root Node[T] // sentinel: root.next is the most recently used
}

// Node links one value into a List; Val is the value itself.
type Node[T any] struct {
	prev, next *Node[T]
	Val        T
}

// Init empties l; a List must be initialised before use.
func (l *List[T]) Init() { l.root.prev, l.root.next = &l.root, &l.root }

// ToFront puts n first, unlinking it from where it was if it was linked.
func (l *List[T]) ToFront(n *Node[T]) {
	if n.next != nil {
		l.Remove(n)
	}
	n.prev = &l.root
	n.next = l.root.next
	l.root.next.prev = n
	l.root.next = n
}

// Remove unlinks n.
func (l *List[T]) Remove(n *Node[T]) {
	n.prev.next = n.next
	n.next.prev = n.prev
	n.prev, n.next = nil, nil
}

// Oldest returns the least recently used node, or nil when l is empty.
func (l *List[T]) Oldest() *Node[T] {
	if l.root.prev == &l.root {
		return nil
	}
	return l.root.prev
}

// OldestFirst yields the values from the least to the most recently used.
// The list must not change during the loop.
func (l *List[T]) OldestFirst() iter.Seq[T] {
	return func(yield func(T) bool) {
		for n := l.root.prev; n != &l.root; n = n.prev {
			if !yield(n.Val) {
				return
			}
		}
	}
}
