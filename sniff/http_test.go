package sniff

import (
	"bytes"
	"testing"
)

func TestHTTPHost(t *testing.T) {
	for _, tc := range []struct {
		name, req string
		host      string
		v         Verdict
	}{
		{"host", "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", "example.com", Found},
		{"port stripped", "GET /x HTTP/1.1\r\nUser-Agent: t\r\nHost: Example.com:8080\r\n\r\n", "example.com", Found},
		{"case-insensitive name", "POST /p HTTP/1.1\r\nhOsT:\texample.org \r\n", "example.org", Found},
		{"no space", "GET / HTTP/1.1\r\nHost:a.example\r\n", "a.example", Found},
		{"bare LF", "GET / HTTP/1.0\nHost: lf.example\n\n", "lf.example", Found},
		{"first Host wins", "GET / HTTP/1.1\r\nHost: one.example\r\nHost: two.example\r\n", "one.example", Found},
		{"absolute-form", "GET http://abs.example:81/a?b HTTP/1.1\r\nHost: other.example\r\n\r\n", "abs.example", Found},
		{"absolute-form userinfo", "GET http://u:p@abs.example/ HTTP/1.1\r\n", "abs.example", Found},
		{"absolute-form https scheme", "OPTIONS HTTPS://abs.example HTTP/1.1\r\n", "abs.example", Found},
		{"absolute-form IP", "GET http://192.0.2.1/ HTTP/1.1\r\nHost: h.example\r\n", "", NoName},
		{"webdav method", "PROPFIND /d HTTP/1.1\r\nHost: dav.example\r\n", "dav.example", Found},
		{"obs-fold skipped", "GET / HTTP/1.1\r\nX-A: a\r\n  b\r\nHost: f.example\r\n", "f.example", Found},
		{"host IPv4", "GET / HTTP/1.1\r\nHost: 192.0.2.1:80\r\n\r\n", "", NoName},
		{"host IPv6", "GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n", "", NoName},
		{"empty host", "GET / HTTP/1.1\r\nHost: \r\n\r\n", "", NoName},
		{"bad port", "GET / HTTP/1.1\r\nHost: a.example:8x\r\n", "", NoName},
		{"no host", "GET / HTTP/1.0\r\nAccept: */*\r\n\r\n", "", NoName},
		{"connect", "CONNECT tunnel.example:443 HTTP/1.1\r\nHost: tunnel.example:443\r\n\r\n", "", NoName},
		{"headers unfinished", "GET / HTTP/1.1\r\nAccept: */*\r\n", "", NeedMore},
		{"host line unfinished", "GET / HTTP/1.1\r\nHost: example.com", "", NeedMore},
		{"request line unfinished", "GET /index.html HTTP/1", "", NeedMore},
		{"method only", "GET", "", NeedMore},
		{"lowercase method", "get / HTTP/1.1\r\n", "", NotMatch},
		{"http2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "", NotMatch},
		{"http 0.9", "GET /\r\n", "", NotMatch},
		{"smtp", "EHLO client.example\r\n", "", NotMatch},
		{"ssh", "SSH-2.0-OpenSSH_9.2\r\n", "", NotMatch},
		{"tls", "\x16\x03\x01\x02\x00\x01", "", NotMatch},
		{"two spaces", "GET  / HTTP/1.1\r\n", "", NotMatch},
		{"bad header line", "GET / HTTP/1.1\r\nno colon here\r\nHost: a.example\r\n", "", NotMatch},
		{"long method", "ABCDEFGHIJKLMNOPQRSTUVWXYZ / HTTP/1.1\r\n", "", NotMatch},
		{"version 1.2", "GET / HTTP/1.2\r\n", "", NotMatch},
		{"version trailing", "GET / HTTP/1.1x\r\n", "", NotMatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host, v := HTTPHost([]byte(tc.req))
			if host != tc.host || v != tc.v {
				t.Fatalf("HTTPHost(%q) = %q, %v; want %q, %v", tc.req, host, v, tc.host, tc.v)
			}
			checkIncremental(t, HTTPHost, []byte(tc.req))
			if tc.req[0] != 0x16 {
				if got := Stream([]byte(tc.req)); got.Host != tc.host || got.Verdict != tc.v {
					t.Fatalf("Stream = %+v", got)
				}
			}
		})
	}
}

func TestHTTPCurl(t *testing.T) {
	headersDone := func(b []byte) bool { return bytes.Contains(b, []byte("\r\n\r\n")) }
	req := curlFirstBytes(t, "plain.example.net", "http://plain.example.net:PORT/path?q=1", headersDone)
	if host, v := HTTPHost(req); v != Found || host != "plain.example.net" {
		t.Fatalf("curl's request %q: %q, %v", req, host, v)
	}
	if got := Stream(req); got.Protocol != HTTP || got.Host != "plain.example.net" {
		t.Fatalf("Stream = %+v", got)
	}
	checkIncremental(t, HTTPHost, req)

	// Through a proxy curl sends the absolute form; its authority is the name.
	req = curlFirstBytes(t, "proxy.invalid", "http://origin.example.net/", headersDone,
		"--proxy", "http://proxy.invalid:PORT")
	if !bytes.HasPrefix(req, []byte("GET http://origin.example.net/ HTTP/1.1\r\n")) {
		t.Fatalf("curl sent %q; want an absolute-form request", req)
	}
	if host, v := HTTPHost(req); v != Found || host != "origin.example.net" {
		t.Fatalf("absolute form: %q, %v", host, v)
	}
}
