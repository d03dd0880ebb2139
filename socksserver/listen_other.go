//go:build !linux

package socksserver

import "net"

// tcpListenConfig leaves the keep-alive to Go's accept, which sets it on each
// connection (whether accepted sockets inherit it elsewhere is not relied
// on).
func tcpListenConfig() net.ListenConfig {
	return net.ListenConfig{KeepAlive: 0, KeepAliveConfig: net.KeepAliveConfig{
		Enable: true, Idle: listenKeepAliveIdle, Interval: listenKeepAliveInterval, Count: listenKeepAliveCount}}
}
