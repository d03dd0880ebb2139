package dns

import "iter"

// lruList orders values from most to least recently used. It is intrusive:
// each value owns the lruNode that links it, so moving a value to the front
// allocates nothing. Call init before use; callers hold their own lock.
type lruList[T any] struct {
	root lruNode[T] // sentinel: root.next is the most recently used
}

// lruNode links one value into an lruList; val is the value itself.
type lruNode[T any] struct {
	prev, next *lruNode[T]
	val        T
}

func (l *lruList[T]) init() { l.root.prev, l.root.next = &l.root, &l.root }

// toFront puts n first, unlinking it from where it was if it was linked.
func (l *lruList[T]) toFront(n *lruNode[T]) {
	if n.next != nil {
		l.remove(n)
	}
	n.prev = &l.root
	n.next = l.root.next
	l.root.next.prev = n
	l.root.next = n
}

// remove unlinks n.
func (l *lruList[T]) remove(n *lruNode[T]) {
	n.prev.next = n.next
	n.next.prev = n.prev
	n.prev, n.next = nil, nil
}

// oldest returns the least recently used node, or nil when l is empty.
func (l *lruList[T]) oldest() *lruNode[T] {
	if l.root.prev == &l.root {
		return nil
	}
	return l.root.prev
}

// oldestFirst yields the values from the least to the most recently used.
// The list must not change during the loop.
func (l *lruList[T]) oldestFirst() iter.Seq[T] {
	return func(yield func(T) bool) {
		for n := l.root.prev; n != &l.root; n = n.prev {
			if !yield(n.val) {
				return
			}
		}
	}
}
