// Package proxyurl checks the part of a proxy URL every upstream client
// shares: scheme://[user[:pass]@]host[:port] and nothing else. The clients
// (socksclient, httpconnect) check their own schemes and credentials on top
// and export the whole check, which the config calls instead of copying it.
package proxyurl

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
)

// HostPort checks that u names a host, an optional port from 1 to 65535
// and no path, query or fragment, and returns "host:port" (defaultPort when
// u has none). Errors name the URL without its password and say what would
// be right.
func HostPort(u *url.URL, defaultPort int) (string, error) {
	if u.Opaque != "" || u.Hostname() == "" {
		return "", fmt.Errorf("url %q names no host; want %s://host:port", u.Redacted(), u.Scheme)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("url %q: only %s://[user:pass@]host:port is allowed (no path or query)", u.Redacted(), u.Scheme)
	}
	port := defaultPort
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("url %q: port %q is not a number from 1 to 65535", u.Redacted(), p)
		}
		port = n
	}
	return net.JoinHostPort(u.Hostname(), strconv.Itoa(port)), nil
}
