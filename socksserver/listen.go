package socksserver

import (
	"context"
	"net"
	"time"
)

// Keep-alive of the connections Listen accepts: Go's defaults for a
// ListenConfig without KeepAlive (net.KeepAliveConfig's zero values).
const (
	listenKeepAliveIdle     = 15 * time.Second
	listenKeepAliveInterval = 15 * time.Second
	listenKeepAliveCount    = 9
)

// Listen opens the TCP listener a Server serves (ListenAndServe uses it):
// what it accepts has TCP keep-alive, 15 s idle, then a probe every 15 s,
// 9 unanswered probes end the connection, as with a plain
// net.ListenConfig. On Linux these are set once on the listening socket,
// from which every accepted socket inherits them: four system calls fewer
// per connection than Go's accept makes to set them on each one.
func Listen(ctx context.Context, network, address string) (net.Listener, error) {
	lc := tcpListenConfig()
	return lc.Listen(ctx, network, address)
}
