package socksserver

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
)

// childEnv makes the test binary a server process (see TestMain): the
// capacity test needs the server's descriptors counted apart from the
// clients' and targets', which would not fit one process's limit.
const childEnv = "SOCKSSERVER_TEST_CHILD"

// serveChild runs a server on 127.0.0.1 with MaxConns from the child's
// environment, prints its address, answers "stats" lines on stdin with its
// Stats as JSON, and stops at EOF.
func serveChild() int {
	var maxConns int
	fmt.Sscan(os.Getenv(childEnv), &maxConns)
	srv, err := New(Config{MaxConns: maxConns, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	fmt.Println(ln.Addr())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "stats" {
			b, _ := json.Marshal(srv.Stats())
			fmt.Println(string(b))
		}
	}
	cancel()
	<-done
	return 0
}
