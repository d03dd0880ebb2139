package sniff

// Real captures: the first bytes that Go's crypto/tls client, curl and
// quic-go send, taken live by each test, and an oracle (crypto/tls's own
// server) for what a ClientHello's server_name is.

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

// goClientHello returns the bytes crypto/tls's client writes first (its
// ClientHello in TLS records), captured over a net.Pipe.
func goClientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	app, srv := net.Pipe()
	defer app.Close()
	defer srv.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = tls.Client(app, cfg).Handshake() // fails once srv is closed
	}()
	b := readUntil(t, srv, func(b []byte) bool {
		_, v := TLSServerName(b)
		return v != NeedMore
	})
	srv.Close()
	<-done
	return b
}

// readUntil reads c until enough(everything so far) or 5 s pass.
func readUntil(t testing.TB, c net.Conn, enough func([]byte) bool) []byte {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil && !errors.Is(err, io.ErrClosedPipe) {
		t.Fatal(err)
	}
	var b []byte
	buf := make([]byte, 4096)
	for !enough(b) {
		n, err := c.Read(buf)
		b = append(b, buf[:n]...)
		if err != nil {
			t.Fatalf("read after %d bytes: %v", len(b), err)
		}
	}
	return b
}

// curlFirstBytes runs curl with args against a loopback listener that
// stands for every host (--resolve NAME:PORT:127.0.0.1 is added for name)
// and returns the bytes curl sends first, read until enough says so. url
// may contain PORT, replaced by the listener's port.
func curlFirstBytes(t testing.TB, name, url string, enough func([]byte) bool, args ...string) []byte {
	t.Helper()
	curl := testenv.NeedTool(t, "curl", "curl")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	url = strings.ReplaceAll(url, "PORT", port)
	for i, a := range args {
		args[i] = strings.ReplaceAll(a, "PORT", port)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, curl, append([]string{"-sk", "--max-time", "5",
		"--resolve", name + ":" + port + ":127.0.0.1", url}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = cmd.Wait() // curl fails: nobody answers it
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return readUntil(t, c, enough)
}

// oracleServerName is the server_name crypto/tls's server sees in the
// ClientHello that stream starts with ("" for none).
func oracleServerName(t testing.TB, stream []byte) string {
	t.Helper()
	app, srv := net.Pipe()
	defer srv.Close()
	go func() {
		_, _ = app.Write(stream)
		_, _ = io.Copy(io.Discard, app) // the server's answer
	}()
	defer app.Close()
	got, seen := "", false
	errStop := errors.New("seen")
	err := tls.Server(srv, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		got, seen = h.ServerName, true
		return nil, errStop
	}}).Handshake()
	if !seen {
		t.Fatalf("crypto/tls's server did not take the stream as a ClientHello: %v", err)
	}
	return got
}

// quicInitials returns the first datagrams quic-go's client sends to a
// loopback socket that never answers, read until enough(datagrams so far)
// or 5 s pass.
func quicInitials(t testing.TB, serverName string, version quic.Version, enough func([][]byte) bool) [][]byte {
	t.Helper()
	peer, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := quic.DialAddr(ctx, peer.LocalAddr().String(),
			&tls.Config{ServerName: serverName, NextProtos: []string{"h3"}, InsecureSkipVerify: true},
			&quic.Config{Versions: []quic.Version{version}})
		if err == nil {
			conn.CloseWithError(0, "")
		}
	}()
	defer func() {
		cancel()
		<-done
	}()
	if err := peer.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	buf := make([]byte, 65535)
	for !enough(out) {
		n, _, err := peer.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("after %d datagrams: %v", len(out), err)
		}
		out = append(out, bytes.Clone(buf[:n]))
	}
	return out
}

// recordsOf re-frames the handshake bytes hs as TLS handshake records of at
// most size bytes each (RFC 8446 section 5.1 allows any split).
func recordsOf(hs []byte, size int) []byte {
	var out []byte
	for len(hs) > 0 {
		n := min(size, len(hs))
		out = append(out, recordTypeHandshake, 3, 1, byte(n>>8), byte(n))
		out = append(out, hs[:n]...)
		hs = hs[n:]
	}
	return out
}

// handshakeOf returns the handshake message carried by the records of a
// captured first flight.
func handshakeOf(t testing.TB, stream []byte) []byte {
	t.Helper()
	hs, broken := handshakeFragments(stream)
	n, ok := handshakeLen(hs)
	if broken || !ok || len(hs) < n {
		t.Fatalf("no whole handshake message in the %d bytes captured", len(stream))
	}
	return hs[:n]
}
