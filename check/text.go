package check

import (
	"fmt"
	"io"
	"strings"
)

// WriteText writes the report for people: one line per probe, the NAT
// summary, the suggested config and the overall verdict.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "tunsocks check %s\n", r.Proxy)
	width := 0
	for _, p := range r.Probes {
		width = max(width, len(p.ID))
	}
	for _, p := range r.Probes {
		t := ""
		if p.Verdict != Skip {
			t = fmt.Sprintf("%.1f ms", p.MS)
		}
		fmt.Fprintf(&b, "  %-4s  %-*s  %10s  %s\n", p.Verdict, width, p.ID, t, p.Summary)
	}
	if n := r.Facts.NAT; n != nil && n.Summary != "" {
		fmt.Fprintf(&b, "\nNAT: %s\n", n.Summary)
	}
	if r.Config != "" {
		b.WriteString("\nSuggested config:\n")
		for _, line := range strings.Split(strings.TrimRight(r.Config, "\n"), "\n") {
			b.WriteString("  " + line + "\n")
		}
	}
	counts := map[Verdict]int{}
	for _, p := range r.Probes {
		counts[p.Verdict]++
	}
	fmt.Fprintf(&b, "\nResult: %s (%d pass, %d warn, %d fail, %d skipped) in %.0f ms\n", r.Verdict, counts[Pass], counts[Warn], counts[Fail], counts[Skip], r.MS)
	_, err := io.WriteString(w, b.String())
	return err
}

// ProbeByID returns the probe with id, or nil.
func (r *Report) ProbeByID(id string) *Probe {
	for i := range r.Probes {
		if r.Probes[i].ID == id {
			return &r.Probes[i]
		}
	}
	return nil
}
