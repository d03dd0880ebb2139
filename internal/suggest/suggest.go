// Package suggest finds the "did you mean" candidate for a misspelt name, so
// every error about a name the user got wrong can say what would be right.
package suggest

// Distance is the Levenshtein distance between a and b. Strings longer than
// 64 bytes are never near anything (bounded work on hostile input).
func Distance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 30
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Closest returns the candidate nearest to s after fold (e.g.
// strings.ToLower) is applied to both, with its distance; "" and a large
// distance when there are no candidates.
func Closest(s string, cands []string, fold func(string) string) (string, int) {
	best, bestD := "", 1<<30
	fs := fold(s)
	for _, c := range cands {
		if d := Distance(fs, fold(c)); d < bestD {
			best, bestD = c, d
		}
	}
	return best, bestD
}
