package dns

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/tunsocks/tunsocks/internal/idn"
)

// Filter is a fake-IP filter: names it matches get real answers from the
// Direct resolver instead of fake addresses. Patterns follow Clash's
// fake-ip-filter (its domain trie):
//
//	example.com      the name exactly
//	*.example.com    exactly one more label: a.example.com, not example.com
//	                 nor a.b.example.com; "*" may stand for any one label,
//	                 as in time.*.com
//	.example.com     any subdomain, at any depth, but not example.com itself
//	+.example.com    example.com and any subdomain
//
// Matching ignores case and a trailing dot. A Filter is immutable and safe
// for concurrent use; the nil *Filter matches nothing.
type Filter struct {
	root fnode
	n    int
}

// fnode is a trie node keyed by labels from the right; the keys "*" (any one
// label) and "" (one or more labels, from a leading dot) are wildcards.
type fnode struct {
	children map[string]*fnode
	end      bool
}

// NewFilter compiles patterns. Empty strings and lines starting with # are
// skipped; any other pattern that does not parse is an error naming it.
func NewFilter(patterns []string) (*Filter, error) {
	f := &Filter{}
	for _, raw := range patterns {
		p := strings.TrimSpace(raw)
		if p == "" || p[0] == '#' {
			continue
		}
		labels, err := splitPattern(p)
		if err != nil {
			return nil, fmt.Errorf("dns: fake-ip-filter pattern %q: %w", raw, err)
		}
		if labels[0] == "+" {
			f.insert(labels[1:])
			labels[0] = ""
		}
		f.insert(labels)
		f.n++
	}
	return f, nil
}

// Len returns the number of patterns compiled.
func (f *Filter) Len() int {
	if f == nil {
		return 0
	}
	return f.n
}

// CheckFilterPattern reports why p (trimmed of spaces) is not a pattern
// NewFilter accepts, or nil; config validation calls it so that the error
// names the file and line.
func CheckFilterPattern(p string) error {
	_, err := splitPattern(strings.TrimSpace(p))
	return err
}

// splitPattern validates p and returns its labels, left to right, in lower
// case, internationalised labels in their ASCII (xn--) form, as queries
// carry them. A leading "" is the dot wildcard; a leading "+" the plus
// wildcard.
func splitPattern(p string) ([]string, error) {
	if i := strings.IndexByte(p, ':'); i > 0 {
		return nil, fmt.Errorf("%s patterns are not supported (only domain patterns are)", p[:i])
	}
	p = strings.ToLower(p)
	a, err := idn.ASCII(p)
	if err != nil {
		return nil, fmt.Errorf("%w; write the name as it is registered (like +.bücher.de) or in its ASCII form (like +.xn--bcher-kva.de)", err)
	}
	p = a
	if len(p) > 1 && p[len(p)-1] == '.' {
		p = p[:len(p)-1]
	}
	if len(p) > 253 {
		return nil, fmt.Errorf("longer than 253 bytes")
	}
	labels := strings.Split(p, ".")
	for i, l := range labels {
		switch {
		case l == "":
			if i != 0 || len(labels) == 1 {
				return nil, fmt.Errorf("empty label")
			}
		case l == "+":
			if i != 0 {
				return nil, fmt.Errorf(`"+" is only allowed as the first label`)
			}
		case l == "*":
		case len(l) > 63:
			return nil, fmt.Errorf("label %q longer than 63 bytes", l)
		default:
			for j := 0; j < len(l); j++ {
				if c := l[j]; c <= ' ' || c >= 0x7f || c == '*' || c == '+' {
					return nil, fmt.Errorf("label %q: character %q not allowed (wildcards stand for whole labels)", l, c)
				}
			}
		}
	}
	return labels, nil
}

// insert adds labels (left to right) to the trie.
func (f *Filter) insert(labels []string) {
	n := &f.root
	for i := len(labels) - 1; i >= 0; i-- {
		if n.children == nil {
			n.children = make(map[string]*fnode)
		}
		c := n.children[labels[i]]
		if c == nil {
			c = &fnode{}
			n.children[labels[i]] = c
		}
		n = c
	}
	n.end = true
}

// Match reports whether host matches one of the filter's patterns.
func (f *Filter) Match(host string) bool {
	if f == nil || f.n == 0 {
		return false
	}
	host = trimDot(host)
	if host == "" || host == "." || len(host) > 253 {
		return false
	}
	var lower [253]byte
	for i := 0; i < len(host); i++ {
		c := host[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower[i] = c
	}
	name := lower[:len(host)]

	// Walk the labels right to left, keeping every node that the labels so
	// far can reach (at most one per trie node at this depth, so no
	// backtracking blow-up).
	var bufA, bufB [16]*fnode
	cur := append(bufA[:0], &f.root)
	next := bufB[:0]
	end := len(name)
	for end >= 0 {
		start := bytes.LastIndexByte(name[:end], '.') + 1
		label := name[start:end]
		if len(label) == 0 {
			return false // "a..b" is not a name
		}
		next = next[:0]
		for _, n := range cur {
			if c := n.children[""]; c != nil && c.end {
				return true // one or more labels remain: the dot wildcard takes them
			}
			if c := n.children[string(label)]; c != nil {
				next = append(next, c)
			}
			if c := n.children["*"]; c != nil {
				next = append(next, c)
			}
		}
		if len(next) == 0 {
			return false
		}
		cur, next = next, cur
		end = start - 1
	}
	for _, n := range cur {
		if n.end {
			return true
		}
	}
	return false
}
