// Command tunsocks is a transparent proxifier: it captures traffic on a TUN
// device and carries it through SOCKS upstreams chosen by rules. It also
// ships a complete SOCKS4/4a/5 server.
//
// This package is wiring only: flags, environment and config become typed
// values, every component is built here and passed to the next.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/tunsocks/tunsocks/api"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3";
// otherwise the module version or VCS revision is reported.
var version = ""

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the job failed at run time
	exitUsage   = 2 // bad flags, arguments or configuration
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	err := app.RunContext(ctx, args)
	if err == nil {
		return exitOK
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		if msg := ec.Error(); msg != "" {
			fmt.Fprintln(stderr, "tunsocks:", msg)
		}
		return ec.ExitCode()
	}
	var ue usageError
	if errors.As(err, &ue) || isFlagError(err) {
		fmt.Fprintln(stderr, "tunsocks:", err)
		fmt.Fprintln(stderr, "Run 'tunsocks --help' or 'tunsocks COMMAND --help' for usage.")
		return exitUsage
	}
	fmt.Fprintln(stderr, "tunsocks:", err)
	return exitFailure
}

// usageError marks an error in what the user asked for (exit code 2).
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// isFlagError recognises urfave/cli's flag parsing failures, which it
// returns as plain errors.
func isFlagError(err error) bool {
	s := err.Error()
	return strings.HasPrefix(s, "flag provided but not defined") ||
		strings.HasPrefix(s, "invalid value") ||
		strings.Contains(s, "Required flag") ||
		strings.HasPrefix(s, "flag needs an argument")
}

func versionString() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "devel-" + s.Value[:12]
		}
	}
	return "devel"
}

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:                 "tunsocks",
		Usage:                "a transparent proxifier: TUN capture, rules, SOCKS upstreams; and a SOCKS4/4a/5 server",
		Version:              versionString(),
		Writer:               stdout,
		ErrWriter:            stderr,
		EnableBashCompletion: true,
		HideHelpCommand:      true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error", EnvVars: []string{"TUNSOCKS_LOG_LEVEL"}},
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text or json", EnvVars: []string{"TUNSOCKS_LOG_FORMAT"}},
		},
		Commands: []*cli.Command{
			serverCommand(),
			runCommand(),
			wgCommand(),
			demoCommand(),
			explainCommand(),
			checkCommand(),
			cleanupCommand(),
		},
		// Errors are printed by run, once, with the right exit code.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(c *cli.Context, err error, isSubcommand bool) error {
			return usageError{err}
		},
	}
}

// newLogger builds the logger from the global --log-level and --log-format.
func newLogger(c *cli.Context) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", c.String("log-level"))
	}
	h, err := logHandler(c, level)
	if err != nil {
		return nil, err
	}
	return slog.New(h), nil
}

// newLiveLogger is newLogger for `tunsocks run`: its level can change while
// it runs (the API's PATCH /configs log-level), and its records also reach
// the API's /logs subscribers, each at its own level.
func newLiveLogger(c *cli.Context) (*slog.Logger, *api.LogHub, *slog.LevelVar, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, nil, nil, usagef("--log-level %q: want debug, info, warn or error", c.String("log-level"))
	}
	lv := new(slog.LevelVar)
	lv.Set(level)
	// The hub filters by lv; the handler under it lets everything through.
	h, err := logHandler(c, slog.LevelDebug)
	if err != nil {
		return nil, nil, nil, err
	}
	hub := api.NewLogHub(h, lv)
	return slog.New(hub), hub, lv, nil
}

func logHandler(c *cli.Context, level slog.Leveler) (slog.Handler, error) {
	opts := &slog.HandlerOptions{Level: level}
	w := c.App.ErrWriter
	switch c.String("log-format") {
	case "text":
		return slog.NewTextHandler(w, opts), nil
	case "json":
		return slog.NewJSONHandler(w, opts), nil
	}
	return nil, usagef("--log-format %q: want text or json", c.String("log-format"))
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
