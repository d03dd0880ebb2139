package proxyurl

import (
	"net/url"
	"strings"
	"testing"
)

func TestHostPort(t *testing.T) {
	for _, tt := range []struct{ url, want, err string }{
		{"socks5://h", "h:1080", ""},
		{"socks5://u:p@h:99/", "h:99", ""},
		{"http://[::1]:8888", "[::1]:8888", ""},
		{"socks5:///x", "", `url "socks5:///x" names no host; want socks5://host:port`},
		{"socks5://:1080", "", "names no host"},
		{"socks5:h", "", "names no host"},
		{"socks5://u:secret@h/p", "", `url "socks5://u:xxxxx@h/p": only socks5://[user:pass@]host:port is allowed`},
		{"http://h?x=1", "", "only http://[user:pass@]host:port"},
		{"http://h#f", "", "only http://"},
		{"socks5://h:0", "", `url "socks5://h:0": port "0" is not a number from 1 to 65535`},
		{"socks5://h:65536", "", `port "65536"`},
	} {
		u, err := url.Parse(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		got, err := HostPort(u, 1080)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%s: %q, %v; want an error containing %q", tt.url, got, err, tt.err)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("%s: error %q shows the password", tt.url, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: %q, %v; want %q", tt.url, got, err, tt.want)
		}
	}
}
