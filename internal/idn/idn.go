// Package idn converts internationalised domain names to the ASCII form in
// which DNS queries carry them ("bücher.de" -> "xn--bcher-kva.de"), so that
// rules and filters written in Unicode match the names that arrive.
package idn

import (
	"fmt"
	"strings"

	"golang.org/x/net/idna"
)

// ASCII returns name with every label that holds a non-ASCII character
// mapped as UTS #46 does for lookups (case folded, width and compatibility
// forms normalised, IDNA2008 non-transitional: ß stays ß) and converted to
// its xn-- form. Labels that are already ASCII are returned as they are,
// neither lower-cased nor validated, so underscores (_dmarc), "r3---sn"
// and other names that DNS carries but IDNA would refuse keep working. An
// all-ASCII name is returned unchanged without allocating.
//
// The error names the label and says why it is not a valid
// internationalised label.
func ASCII(name string) (string, error) {
	if isASCII(name) {
		return name, nil
	}
	labels := strings.Split(name, ".")
	for i, l := range labels {
		if isASCII(l) {
			continue
		}
		a, err := idna.Lookup.ToASCII(l)
		if err != nil {
			return "", fmt.Errorf("label %q is not a valid internationalised domain label: %w", l, err)
		}
		labels[i] = a
	}
	return strings.Join(labels, "."), nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
