package api

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// LogHub is a slog.Handler that writes every record its level allows to the
// next handler (the process's normal log) and fans records out to /logs
// subscribers, each at its own level, so a dashboard can watch debug
// records without the terminal printing them. A subscriber that does not
// keep up loses records rather than slowing the logger down.
type LogHub struct {
	hub   *hub
	next  slog.Handler
	attrs []slog.Attr // from WithAttrs, with group prefixes applied
	group string      // the WithGroup prefix, "a.b."
}

type hub struct {
	level slog.Leveler // the next handler's level
	mu    sync.Mutex
	subs  map[*logSub]struct{}
	// recent are the last records the next handler wrote (at its level),
	// oldest first, which a new subscriber gets first: the page's log is
	// not empty until something happens.
	recent []LogRecord
	// min is the lowest level any subscriber wants (math.MaxInt32 when
	// none), read on every Enabled call.
	min     atomic.Int64
	dropped atomic.Uint64
}

type logSub struct {
	level slog.Level
	ch    chan LogRecord
}

// LogRecord is one record as /logs sends it.
type LogRecord struct {
	Time    time.Time
	Level   slog.Level
	Message string
	Attrs   [][2]string // key, value; groups joined with dots
}

// NewLogHub returns a hub writing to next whatever level allows (level
// may be a *slog.LevelVar that PATCH /configs changes). next should
// itself let every level through: the hub filters for it.
func NewLogHub(next slog.Handler, level slog.Leveler) *LogHub {
	h := &hub{level: level, subs: map[*logSub]struct{}{}}
	h.min.Store(int64(noSubscriber))
	return &LogHub{hub: h, next: next}
}

const noSubscriber = slog.Level(1 << 30)

// Enabled implements slog.Handler.
func (l *LogHub) Enabled(ctx context.Context, level slog.Level) bool {
	return level >= l.hub.level.Level() || int64(level) >= l.hub.min.Load()
}

// recentRecords is how many records the hub keeps for new subscribers.
const recentRecords = 100

// Handle implements slog.Handler.
func (l *LogHub) Handle(ctx context.Context, r slog.Record) error {
	var err error
	logged := r.Level >= l.hub.level.Level()
	if logged {
		err = l.next.Handle(ctx, r)
	}
	if !logged && int64(r.Level) < l.hub.min.Load() {
		return err
	}
	rec := LogRecord{Time: r.Time, Level: r.Level, Message: r.Message}
	for _, a := range l.attrs {
		rec.Attrs = appendAttr(rec.Attrs, "", a)
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.Attrs = appendAttr(rec.Attrs, l.group, a)
		return true
	})
	l.hub.mu.Lock()
	if logged {
		if len(l.hub.recent) == recentRecords {
			copy(l.hub.recent, l.hub.recent[1:])
			l.hub.recent = l.hub.recent[:recentRecords-1]
		}
		l.hub.recent = append(l.hub.recent, rec)
	}
	for s := range l.hub.subs {
		if r.Level < s.level {
			continue
		}
		select {
		case s.ch <- rec:
		default:
			l.hub.dropped.Add(1)
		}
	}
	l.hub.mu.Unlock()
	return err
}

func appendAttr(dst [][2]string, prefix string, a slog.Attr) [][2]string {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return dst
	}
	if a.Value.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range a.Value.Group() {
			dst = appendAttr(dst, p, g)
		}
		return dst
	}
	return append(dst, [2]string{prefix + a.Key, a.Value.String()})
}

// WithAttrs implements slog.Handler.
func (l *LogHub) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := *l
	n.next = l.next.WithAttrs(attrs)
	n.attrs = append([]slog.Attr(nil), l.attrs...)
	for _, a := range attrs {
		if l.group != "" {
			a = slog.Group(strings.TrimSuffix(l.group, "."), a)
		}
		n.attrs = append(n.attrs, a)
	}
	return &n
}

// WithGroup implements slog.Handler.
func (l *LogHub) WithGroup(name string) slog.Handler {
	if name == "" {
		return l
	}
	n := *l
	n.next = l.next.WithGroup(name)
	n.group = l.group + name + "."
	return &n
}

// Subscribe returns a channel of the records at level or above, the
// recent ones the log wrote first, and a function that ends the
// subscription. buf bounds the records held for a slow reader.
func (l *LogHub) Subscribe(level slog.Level, buf int) (<-chan LogRecord, func()) {
	s := &logSub{level: level, ch: make(chan LogRecord, buf)}
	h := l.hub
	h.mu.Lock()
	var recent []LogRecord
	for _, r := range h.recent {
		if r.Level >= level {
			recent = append(recent, r)
		}
	}
	if len(recent) > buf/2 {
		recent = recent[len(recent)-buf/2:] // room for what comes next
	}
	for _, r := range recent {
		s.ch <- r
	}
	h.subs[s] = struct{}{}
	h.updateMin()
	h.mu.Unlock()
	return s.ch, func() {
		h.mu.Lock()
		delete(h.subs, s)
		h.updateMin()
		h.mu.Unlock()
	}
}

// Dropped counts records that subscribers were too slow to take.
func (l *LogHub) Dropped() uint64 { return l.hub.dropped.Load() }

func (h *hub) updateMin() {
	m := noSubscriber
	for s := range h.subs {
		m = min(m, s.level)
	}
	h.min.Store(int64(m))
}

// Payload is the record as one line: the message and key=value pairs,
// values with spaces quoted, as /logs' payload shows it.
func (r LogRecord) Payload() string {
	var b strings.Builder
	b.WriteString(r.Message)
	for _, a := range r.Attrs {
		b.WriteByte(' ')
		b.WriteString(a[0])
		b.WriteByte('=')
		if a[1] == "" || strings.ContainsAny(a[1], " \t\n\"=") {
			b.WriteString(strconv.Quote(a[1]))
		} else {
			b.WriteString(a[1])
		}
	}
	return b.String()
}

// clashLevel is the level name the Clash API uses: debug, info, warning,
// error.
func clashLevel(l slog.Level) string {
	switch {
	case l < slog.LevelInfo:
		return "debug"
	case l < slog.LevelWarn:
		return "info"
	case l < slog.LevelError:
		return "warning"
	}
	return "error"
}

// parseClashLevel reads a Clash level name (and slog's "warn"); silent is
// above every record.
func parseClashLevel(s string) (slog.Level, bool) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, true
	case "info", "":
		return slog.LevelInfo, true
	case "warning", "warn":
		return slog.LevelWarn, true
	case "error":
		return slog.LevelError, true
	case "silent":
		return noSubscriber - 1, true
	}
	return 0, false
}
