package api

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/coder/websocket"
)

// stream is one streaming response: a WebSocket when the request was an
// upgrade, else newline-delimited JSON flushed after every object.
type stream struct {
	ctx context.Context // ends when the client goes or the server stops
	ws  *websocket.Conn
	w   http.ResponseWriter
	rc  *http.ResponseController
}

func (s *Server) openStream(w http.ResponseWriter, r *http.Request) (*stream, error) {
	if !isUpgrade(r) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusOK)
		return &stream{ctx: r.Context(), w: w, rc: http.NewResponseController(w)}, nil
	}
	opts := &websocket.AcceptOptions{}
	if s.cfg.AllowOrigins == nil {
		// Any origin may connect, as any may call the REST endpoints
		// (CORS "*"); the secret is what guards both.
		opts.InsecureSkipVerify = true
	} else {
		opts.OriginPatterns = s.cfg.AllowOrigins // "scheme://host" patterns
	}
	c, err := websocket.Accept(w, r, opts)
	if err != nil {
		s.log.Debug("websocket upgrade failed", "path", r.URL.Path, "err", err)
		return nil, err
	}
	// Nothing is read from the client; CloseRead answers its pings and
	// ends ctx when it closes.
	return &stream{ctx: c.CloseRead(r.Context()), ws: c}, nil
}

// send writes v as one message (one line).
func (st *stream) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if st.ws != nil {
		ctx, cancel := context.WithTimeout(st.ctx, 10*time.Second)
		defer cancel()
		return st.ws.Write(ctx, websocket.MessageText, b)
	}
	if _, err := st.w.Write(append(b, '\n')); err != nil {
		return err
	}
	return st.rc.Flush()
}

// tick sends next() every interval (and once at once when now is set)
// until the client goes or next reports false.
func (st *stream) tick(interval time.Duration, now bool, next func() (any, bool)) {
	if now {
		v, ok := next()
		if !ok || st.send(v) != nil {
			return
		}
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-st.ctx.Done():
			return
		case <-t.C:
			v, ok := next()
			if !ok || st.send(v) != nil {
				return
			}
		}
	}
}

func (st *stream) close() {
	if st.ws != nil {
		st.ws.Close(websocket.StatusNormalClosure, "")
	}
}
