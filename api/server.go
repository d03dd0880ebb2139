// Package api is tunsocks' HTTP control surface: a subset of the Clash REST
// API, exact in the shapes the dashboards (metacubexd, yacd, zashboard)
// parse, /metrics in the Prometheus text format, and an embedded live page
// at /ui/ that uses nothing but the API.
//
// It reads one flow table (the router's, through FlowTable) and one set of
// counters (a metrics.Registry); it never reaches into the netstack or the
// relays. Everything it shows or changes comes through the small
// interfaces in types.go, which cmd satisfies.
//
// Auth is a Bearer secret compared in constant time; WebSocket upgrades may
// carry it as ?token= (browsers cannot set headers there), URL-decoded.
// /traffic, /memory, /logs and /connections are WebSockets when the
// request is an upgrade, else newline-delimited JSON flushed each interval
// (GET /connections without an upgrade is one snapshot, as in mihomo).
package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/tunsocks/tunsocks/metrics"
)

// ErrNotFound is wrapped by providers for a name or id they do not know.
var ErrNotFound = errors.New("not found")

// Config builds a Server. Flows is required; a nil provider leaves its
// endpoints empty (or 404 for the ones that act).
type Config struct {
	// Secret, when set, is required of every request but the page's files
	// and CORS preflights.
	Secret string
	// Version is reported by /version, e.g. "tunsocks v1.2.0".
	Version string

	Flows     FlowTable
	Proxies   Proxies
	Rules     Rules
	Control   Control
	Explainer Explainer
	// Logs feeds /logs; LogLevel is the level PATCH /configs log-level sets
	// (the hub's level, normally).
	Logs     *LogHub
	LogLevel *slog.LevelVar
	// Metrics, when set, is served at /metrics.
	Metrics *metrics.Registry

	// AllowOrigins are the origins whose pages may call the API (CORS and
	// WebSocket origin check); nil means any ("*"), as mihomo does.
	AllowOrigins []string

	// DelayTimeout bounds a delay test whose request names no timeout;
	// 0 means 5 s.
	DelayTimeout time.Duration
	Logger       *slog.Logger
	// Now is the clock; nil means time.Now. Tests fix it.
	Now func() time.Time
}

// Server serves the API. Build it with New.
type Server struct {
	cfg Config
	log *slog.Logger
	mux *http.ServeMux

	histMu  sync.Mutex
	history map[string][]delayEntry // delay tests by proxy name, newest last
}

// New checks cfg and builds the Server.
func New(cfg Config) (*Server, error) {
	if cfg.Flows == nil {
		return nil, errors.New("api: Config.Flows is required")
	}
	if cfg.Version == "" {
		cfg.Version = "tunsocks"
	}
	if cfg.DelayTimeout <= 0 {
		cfg.DelayTimeout = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.LogLevel == nil {
		cfg.LogLevel = new(slog.LevelVar)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log, mux: http.NewServeMux(), history: map[string][]delayEntry{}}
	s.routes()
	return s, nil
}

// Serve answers requests on ln until ctx is done, then shuts down: open
// streams end, requests in progress get a second to finish.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return serveHTTP(ctx, ln, s, s.log)
}

// MetricsHandler serves reg alone, for a listener of its own (--metrics).
func MetricsHandler(reg *metrics.Registry) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		writeMetrics(w, reg)
	})
}

// ServeMetrics serves reg at /metrics on ln until ctx is done.
func ServeMetrics(ctx context.Context, ln net.Listener, reg *metrics.Registry, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", MetricsHandler(reg))
	return serveHTTP(ctx, ln, mux, log)
}

func serveHTTP(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close()
		}
	}()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		<-done
		return nil
	}
	return err
}

func writeMetrics(w http.ResponseWriter, reg *metrics.Registry) {
	w.Header().Set("Content-Type", metrics.ContentType)
	w.Header().Set("Cache-Control", "no-store")
	_ = reg.WriteText(w)
}

// ServeHTTP implements http.Handler: CORS, auth, then the routes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.cors(w, r) {
		return
	}
	if r.URL.Path == "/" && r.Method == http.MethodGet && strings.Contains(r.Header.Get("Accept"), "text/html") {
		// A browser pointed at the API gets the page.
		http.Redirect(w, r, "/ui/", http.StatusFound)
		return
	}
	if !strings.HasPrefix(r.URL.Path, "/ui/") && r.URL.Path != "/ui" && !s.authorized(r) {
		writeJSON(w, http.StatusUnauthorized, message{"Unauthorized"})
		return
	}
	s.mux.ServeHTTP(w, r)
}

// cors sets the CORS headers, answers a preflight and reports whether the
// request still needs handling.
func (s *Server) cors(w http.ResponseWriter, r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	h := w.Header()
	h.Add("Vary", "Origin")
	if !s.originAllowed(origin) {
		if r.Method == http.MethodOptions {
			w.WriteHeader(http.StatusForbidden)
			return false
		}
		return true // no CORS headers: the browser withholds the answer
	}
	if s.cfg.AllowOrigins == nil {
		h.Set("Access-Control-Allow-Origin", "*")
	} else {
		h.Set("Access-Control-Allow-Origin", origin)
	}
	if r.Method != http.MethodOptions || r.Header.Get("Access-Control-Request-Method") == "" {
		return true
	}
	// A preflight: it carries no credentials, so it is answered before
	// auth.
	h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE")
	h.Set("Access-Control-Allow-Headers", "Content-Type, Authorization")
	h.Set("Access-Control-Max-Age", "300")
	if strings.EqualFold(r.Header.Get("Access-Control-Request-Private-Network"), "true") {
		// Chrome's Private Network Access: a dashboard served from a
		// public origin may call this API on a private address.
		h.Set("Access-Control-Allow-Private-Network", "true")
	}
	w.WriteHeader(http.StatusNoContent)
	return false
}

func (s *Server) originAllowed(origin string) bool {
	if s.cfg.AllowOrigins == nil {
		return true
	}
	for _, o := range s.cfg.AllowOrigins {
		if o == "*" || strings.EqualFold(o, origin) {
			return true
		}
	}
	return false
}

// authorized checks the Bearer secret, or for a WebSocket upgrade the
// token query parameter (already URL-decoded by Query), in constant time.
func (s *Server) authorized(r *http.Request) bool {
	if s.cfg.Secret == "" {
		return true
	}
	if isUpgrade(r) {
		if tok := r.URL.Query().Get("token"); tok != "" {
			return equalSecret(tok, s.cfg.Secret)
		}
	}
	auth := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	return equalSecret(strings.TrimSpace(tok), s.cfg.Secret)
}

func equalSecret(got, want string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

func isUpgrade(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

type message struct {
	Message string `json:"message"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"message":"encoding the answer failed"}`)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, status int, format string, a ...any) {
	writeJSON(w, status, message{fmt.Sprintf(format, a...)})
}

func notFound(w http.ResponseWriter) {
	writeJSON(w, http.StatusNotFound, message{"Resource not found"})
}
