package metrics

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Check reads a text exposition and reports every way it breaks the format
// or the naming conventions: samples without a HELP and TYPE line before
// them, a family split into pieces, counters not ending in _total (or other
// types that do), upper-case names, duplicate series, malformed labels or
// values, and histograms whose buckets are not cumulative or whose +Inf
// bucket differs from _count. nil means clean. It is the test suite's lint
// of /metrics; `promtool check metrics` checks the same output in CI.
func Check(r io.Reader) error {
	var (
		errs   []error
		types  = map[string]string{}
		helps  = map[string]bool{}
		done   = map[string]bool{} // families whose samples have ended
		series = map[string]bool{}
		cur    string // family of the previous sample
		hist   = map[string]*histCheck{}
	)
	fail := func(line int, format string, a ...any) {
		errs = append(errs, fmt.Errorf("line %d: %s", line, fmt.Sprintf(format, a...)))
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "#") {
			f := strings.SplitN(line, " ", 4)
			if len(f) < 3 || (f[1] != "HELP" && f[1] != "TYPE") {
				continue // a comment
			}
			name := f[2]
			if !nameRE.MatchString(name) {
				fail(n, "%q is not a valid metric name", name)
			}
			switch f[1] {
			case "HELP":
				if helps[name] {
					fail(n, "second HELP for %s", name)
				}
				helps[name] = true
				if len(f) < 4 || strings.TrimSpace(f[3]) == "" {
					fail(n, "%s has an empty HELP", name)
				}
			case "TYPE":
				if _, ok := types[name]; ok {
					fail(n, "second TYPE for %s", name)
				}
				if len(f) < 4 {
					fail(n, "TYPE of %s has no type", name)
					continue
				}
				typ := f[3]
				switch typ {
				case TypeCounter:
					if !strings.HasSuffix(name, "_total") {
						fail(n, "counter %s should end in _total", name)
					}
				case TypeGauge, TypeHistogram, "summary", "untyped":
					if strings.HasSuffix(name, "_total") {
						fail(n, "%s %s should not end in _total (only counters do)", typ, name)
					}
				default:
					fail(n, "unknown type %q for %s", typ, name)
				}
				types[name] = typ
			}
			if strings.ToLower(name) != name {
				fail(n, "%s should be snake_case, lower case", name)
			}
			continue
		}
		name, labels, value, err := parseSample(line)
		if err != nil {
			fail(n, "%v", err)
			continue
		}
		fam, suffix := name, ""
		for _, s := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, s); ok && types[base] == TypeHistogram {
				fam, suffix = base, s
			}
		}
		typ, ok := types[fam]
		if !ok {
			fail(n, "sample of %s before its TYPE line", name)
		}
		if !helps[fam] {
			fail(n, "sample of %s before its HELP line", name)
		}
		if fam != cur {
			if done[fam] {
				fail(n, "samples of %s are not together", fam)
			}
			if cur != "" {
				done[cur] = true
			}
			cur = fam
		}
		key := name + "{" + canonical(labels) + "}"
		if series[key] {
			fail(n, "duplicate series %s", key)
		}
		series[key] = true
		if typ == TypeCounter && value < 0 {
			fail(n, "counter %s is negative", name)
		}
		if typ == TypeHistogram {
			var le string
			rest := labels[:0:0]
			for _, l := range labels {
				if l[0] == "le" {
					le = l[1]
				} else {
					rest = append(rest, l)
				}
			}
			hk := fam + "{" + canonical(rest) + "}"
			h := hist[hk]
			if h == nil {
				h = &histCheck{last: math.Inf(-1), lastCount: -1}
				hist[hk] = h
			}
			switch suffix {
			case "_bucket":
				if le == "" {
					fail(n, "bucket of %s without le", fam)
					break
				}
				ub, err := strconv.ParseFloat(le, 64)
				if err != nil {
					fail(n, "bucket of %s: le=%q is not a number", fam, le)
					break
				}
				if ub <= h.last {
					fail(n, "buckets of %s are not in increasing order", hk)
				}
				if value < h.lastCount {
					fail(n, "buckets of %s are not cumulative", hk)
				}
				h.last, h.lastCount = ub, value
				if math.IsInf(ub, 1) {
					h.inf, h.hasInf = value, true
				}
			case "_count":
				h.count, h.hasCount = value, true
			case "":
				fail(n, "histogram %s has a bare sample", fam)
			}
		}
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, err)
	}
	keys := make([]string, 0, len(hist))
	for k := range hist {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		h := hist[k]
		switch {
		case !h.hasInf:
			errs = append(errs, fmt.Errorf("histogram %s has no +Inf bucket", k))
		case !h.hasCount:
			errs = append(errs, fmt.Errorf("histogram %s has no _count", k))
		case h.inf != h.count:
			errs = append(errs, fmt.Errorf("histogram %s: +Inf bucket %v differs from _count %v", k, h.inf, h.count))
		}
	}
	return errors.Join(errs...)
}

type histCheck struct {
	last, lastCount float64
	inf, count      float64
	hasInf          bool
	hasCount        bool
}

func canonical(labels [][2]string) string {
	s := slices.Clone(labels)
	slices.SortFunc(s, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	parts := make([]string, len(s))
	for i, l := range s {
		parts[i] = l[0] + "=" + strconv.Quote(l[1])
	}
	return strings.Join(parts, ",")
}

// parseSample parses `name{a="x",b="y"} value [timestamp]`.
func parseSample(line string) (name string, labels [][2]string, value float64, err error) {
	i := strings.IndexAny(line, "{ ")
	if i < 0 {
		return "", nil, 0, fmt.Errorf("no value in %q", line)
	}
	name, rest := line[:i], line[i:]
	if !nameRE.MatchString(name) {
		return "", nil, 0, fmt.Errorf("%q is not a valid metric name", name)
	}
	if rest[0] == '{' {
		rest = rest[1:]
		seen := map[string]bool{}
		for {
			if rest == "" {
				return "", nil, 0, fmt.Errorf("%s: unterminated labels", name)
			}
			if rest[0] == '}' {
				rest = rest[1:]
				break
			}
			eq := strings.IndexByte(rest, '=')
			if eq <= 0 {
				return "", nil, 0, fmt.Errorf("%s: malformed label in %q", name, rest)
			}
			ln := rest[:eq]
			if !labelRE.MatchString(ln) {
				return "", nil, 0, fmt.Errorf("%s: %q is not a valid label name", name, ln)
			}
			if seen[ln] {
				return "", nil, 0, fmt.Errorf("%s: label %s twice", name, ln)
			}
			seen[ln] = true
			rest = rest[eq+1:]
			if rest == "" || rest[0] != '"' {
				return "", nil, 0, fmt.Errorf("%s: label %s: value not quoted", name, ln)
			}
			var b strings.Builder
			j := 1
			for ; j < len(rest) && rest[j] != '"'; j++ {
				if rest[j] == '\\' && j+1 < len(rest) {
					j++
					switch rest[j] {
					case 'n':
						b.WriteByte('\n')
					case '\\', '"':
						b.WriteByte(rest[j])
					default:
						return "", nil, 0, fmt.Errorf("%s: label %s: bad escape \\%c", name, ln, rest[j])
					}
					continue
				}
				b.WriteByte(rest[j])
			}
			if j >= len(rest) {
				return "", nil, 0, fmt.Errorf("%s: label %s: unterminated value", name, ln)
			}
			labels = append(labels, [2]string{ln, b.String()})
			rest = rest[j+1:]
			rest = strings.TrimPrefix(rest, ",")
		}
	}
	f := strings.Fields(rest)
	if len(f) < 1 || len(f) > 2 {
		return "", nil, 0, fmt.Errorf("%s: want a value and an optional timestamp, got %q", name, rest)
	}
	switch f[0] {
	case "+Inf":
		value = math.Inf(1)
	case "-Inf":
		value = math.Inf(-1)
	case "NaN":
		value = math.NaN()
	default:
		if value, err = strconv.ParseFloat(f[0], 64); err != nil {
			return "", nil, 0, fmt.Errorf("%s: value %q is not a number", name, f[0])
		}
	}
	return name, labels, value, nil
}
