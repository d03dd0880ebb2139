package idn

import (
	"strings"
	"testing"
)

func TestASCII(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"bücher.de", "xn--bcher-kva.de"},
		{"BÜCHER.de", "xn--bcher-kva.de"},            // case folded
		{"www.bücher.de.", "www.xn--bcher-kva.de."},  // a trailing dot stays
		{"faß.de", "xn--fa-hia.de"},                  // non-transitional: ß is kept
		{"例え.テスト", "xn--r8jz45g.xn--zckzah"},         // every non-ASCII label
		{"ｅｘａｍｐｌｅ.com", "example.com"},               // full-width forms
		{"_dmarc.Example.COM", "_dmarc.Example.COM"}, // ASCII: untouched
		{"r3---sn-abc.googlevideo.com", "r3---sn-abc.googlevideo.com"},
		{"xn--bcher-kva.de", "xn--bcher-kva.de"},
		{"", ""},
	} {
		got, err := ASCII(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ASCII(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestASCIIInvalid(t *testing.T) {
	for _, in := range []string{
		"-bücher.de",          // leading hyphen
		"bücher\u200d.de",     // zero-width joiner outside its context
		"a\u0301b.ü\u05d0.de", // a label mixing left-to-right and right-to-left
	} {
		got, err := ASCII(in)
		if err == nil {
			t.Errorf("ASCII(%q) = %q, want an error", in, got)
			continue
		}
		if !strings.Contains(err.Error(), "not a valid internationalised domain label") {
			t.Errorf("ASCII(%q) error %q does not say what is wrong", in, err)
		}
	}
}
