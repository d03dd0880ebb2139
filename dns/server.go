package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Resolver forwards a raw DNS query somewhere and returns the raw response.
// The response must answer the query (same ID and question); the Server checks
// the question again and sets the ID itself. Exchange must be safe for
// concurrent use and must honour ctx.
type Resolver interface {
	Exchange(ctx context.Context, q []byte) ([]byte, error)
}

// Route says how the Server answers for a name.
type Route uint8

// Routes. The zero value is RouteFakeIP.
const (
	// RouteFakeIP: A and AAAA from the fake-IP pool; other query types
	// through the Proxy resolver.
	RouteFakeIP Route = iota
	// RouteDirect: every query through the Direct resolver.
	RouteDirect
	// RouteProxy: every query through the Proxy resolver (real answers,
	// resolved on the far side of the proxy).
	RouteProxy
)

func (r Route) String() string {
	switch r {
	case RouteFakeIP:
		return "fake-ip"
	case RouteDirect:
		return "direct"
	case RouteProxy:
		return "proxy"
	}
	return "Route(" + strconv.Itoa(int(r)) + ")"
}

// Decider picks the Route for a name: lower case, without the trailing dot.
// It is called concurrently and must not block. A Route other than the three
// defined ones is treated as RouteProxy, so an unknown answer never leaks a
// name to the Direct resolver.
type Decider func(host string) Route

// Config configures a Server.
type Config struct {
	// Pool answers A and AAAA for fake-IP names and PTR for its addresses.
	// nil means no fake-IP mode: every query is forwarded.
	Pool *Pool
	// Filter lists names that get real answers from Direct instead of fake
	// addresses (Clash's fake-ip-filter). nil matches nothing.
	Filter *Filter
	// Direct resolves DIRECT and filtered names. Required.
	Direct Resolver
	// Proxy resolves, through the proxy, names that need a real answer and
	// are not DIRECT. nil means such queries get SERVFAIL: they are never
	// sent to Direct instead.
	Proxy Resolver
	// ProxyFor, when set, picks the Proxy resolver per name: the one
	// through the proxy the name's rule picks (DNS over TCP through its
	// CONNECT). nil from it means SERVFAIL for that name (a rejected name).
	ProxyFor func(host string) Resolver
	// Names, when set, learns the A and AAAA records of every answer the
	// Server forwards (real answers only; never the fake ones).
	Names *RealNames
	// Decide picks a route per name. nil means RouteFakeIP for every name
	// when Pool is set, and RouteDirect for every name otherwise.
	Decide Decider
	// Logger gets per-query debug records and forwarding failures; nil
	// discards them.
	Logger *slog.Logger
	// CacheSize bounds the number of forwarded answers kept; 0 means
	// DefaultCacheSize, negative disables the cache.
	CacheSize int
	// MinTTL and MaxTTL clamp how long a forwarded answer is cached.
	// MaxTTL 0 means DefaultMaxTTL. MaxTTL also caps the TTLs handed to
	// clients.
	MinTTL, MaxTTL time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Observe, when set, is told of every query answered (or dropped): its
	// type (A, AAAA, HTTPS, PTR... "other" for the rest) and what the
	// answer was: AnswerFakeIP (from the pool), AnswerReal (forwarded),
	// AnswerNXDomain, AnswerError (SERVFAIL, REFUSED, a malformed or
	// dropped message). For metrics; it must be quick.
	Observe func(qtype, answer string)
}

// Answer kinds for Config.Observe.
const (
	AnswerFakeIP   = "fakeip"
	AnswerReal     = "real"
	AnswerNXDomain = "nxdomain"
	AnswerError    = "error"
)

// Server defaults.
const (
	DefaultCacheSize = 4096
	DefaultMaxTTL    = time.Hour
	// ednsUDPSize is the UDP payload size the Server advertises
	// (the DNS flag day 2020 value).
	ednsUDPSize = 1232
	// maxMsg is the largest DNS message.
	maxMsg = 65535
)

// Server answers DNS queries: fake addresses from the Pool, everything else
// forwarded by Route and cached. It is safe for concurrent use.
type Server struct {
	pool           *Pool
	filter         *Filter
	direct, proxy  Resolver
	proxyFor       func(host string) Resolver
	names          *RealNames
	decide         Decider
	log            *slog.Logger
	cache          *cache // nil when disabled
	minTTL, maxTTL time.Duration
	now            func() time.Time
	observe        func(qtype, answer string)
}

// NewServer checks cfg and returns a Server.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Direct == nil {
		return nil, errors.New("dns: Config.Direct is required")
	}
	if cfg.MinTTL < 0 || cfg.MaxTTL < 0 {
		return nil, fmt.Errorf("dns: negative MinTTL %s or MaxTTL %s", cfg.MinTTL, cfg.MaxTTL)
	}
	s := &Server{
		pool:     cfg.Pool,
		filter:   cfg.Filter,
		direct:   cfg.Direct,
		proxy:    cfg.Proxy,
		proxyFor: cfg.ProxyFor,
		names:    cfg.Names,
		decide:   cfg.Decide,
		log:      cfg.Logger,
		minTTL:   cfg.MinTTL,
		maxTTL:   cfg.MaxTTL,
		now:      cfg.Now,
		observe:  cfg.Observe,
	}
	if s.maxTTL == 0 {
		s.maxTTL = DefaultMaxTTL
	}
	if s.minTTL > s.maxTTL {
		return nil, fmt.Errorf("dns: MinTTL %s exceeds MaxTTL %s", s.minTTL, s.maxTTL)
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	switch size := cfg.CacheSize; {
	case size == 0:
		s.cache = newCache(DefaultCacheSize)
	case size > 0:
		s.cache = newCache(size)
	}
	return s, nil
}

// Handle answers one query datagram. resp is the datagram to send back; nil
// means drop the query (too short for a header, or a response rather than a
// query). err, when not nil, says what went wrong and is meant for logs only:
// a forwarding failure returns both a SERVFAIL resp and the cause.
//
// Responses are truncated (TC bit, question only) to the client's UDP payload
// size: 512 bytes, or what its EDNS OPT record offers.
func (s *Server) Handle(ctx context.Context, query []byte) (resp []byte, err error) {
	return s.handle(ctx, query, true)
}

// edns is what a query's OPT record asked for.
type edns struct {
	present bool
	size    int  // UDP payload size offered by the client
	do      bool // DNSSEC OK
}

// req is a parsed query.
type req struct {
	raw  []byte
	h    dnsmessage.Header
	q    dnsmessage.Question
	host string // lower case, no trailing dot; "" for the root
	e    edns
	fake bool // answered from the pool
}

func (s *Server) handle(ctx context.Context, query []byte, udp bool) ([]byte, error) {
	if s.observe == nil {
		resp, _, err := s.handleQuery(ctx, query, udp)
		return resp, err
	}
	resp, r, err := s.handleQuery(ctx, query, udp)
	qtype := "other"
	if r != nil && r.q.Type != 0 {
		qtype = typeLabel(r.q.Type)
	}
	s.observe(qtype, answerKind(r, resp, err))
	return resp, err
}

// typeLabel names the query types worth a series of their own.
func typeLabel(t dnsmessage.Type) string {
	switch t {
	case dnsmessage.TypeA:
		return "A"
	case dnsmessage.TypeAAAA:
		return "AAAA"
	case dnsmessage.TypeCNAME:
		return "CNAME"
	case dnsmessage.TypeMX:
		return "MX"
	case dnsmessage.TypeNS:
		return "NS"
	case dnsmessage.TypePTR:
		return "PTR"
	case dnsmessage.TypeSOA:
		return "SOA"
	case dnsmessage.TypeSRV:
		return "SRV"
	case dnsmessage.TypeTXT:
		return "TXT"
	case dnsmessage.TypeSVCB:
		return "SVCB"
	case dnsmessage.TypeHTTPS:
		return "HTTPS"
	case dnsmessage.TypeALL:
		return "ANY"
	}
	return "other"
}

// answerKind classifies an answer for Observe.
func answerKind(r *req, resp []byte, err error) string {
	if err != nil || len(resp) < 4 {
		return AnswerError
	}
	switch dnsmessage.RCode(resp[3] & 0x0f) {
	case dnsmessage.RCodeSuccess:
		if r != nil && r.fake {
			return AnswerFakeIP
		}
		return AnswerReal
	case dnsmessage.RCodeNameError:
		return AnswerNXDomain
	}
	return AnswerError
}

func (s *Server) handleQuery(ctx context.Context, query []byte, udp bool) ([]byte, *req, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, nil, fmt.Errorf("dns: dropped message: %w", err)
	}
	if h.Response {
		return nil, nil, errors.New("dns: dropped message: it is a response, not a query")
	}
	if h.OpCode != 0 {
		resp, err := s.reply(h, nil, edns{}, dnsmessage.RCodeNotImplemented, nil)
		return resp, nil, err
	}
	if qd := int(query[4])<<8 | int(query[5]); qd != 1 {
		resp, err := s.reply(h, nil, edns{}, dnsmessage.RCodeFormatError, nil)
		return resp, nil, err
	}
	r := req{raw: query, h: h}
	if r.q, err = p.Question(); err != nil {
		resp, err := s.reply(h, nil, edns{}, dnsmessage.RCodeFormatError, nil)
		return resp, nil, err
	}
	if r.e, err = parseEDNS(&p); err != nil {
		resp, err := s.reply(h, &r.q, edns{}, dnsmessage.RCodeFormatError, nil)
		return resp, &r, err
	}
	resp, err := s.answer(ctx, &r)
	if udp && resp != nil {
		limit := 512
		if r.e.present && r.e.size > limit {
			limit = r.e.size
		}
		if len(resp) > limit {
			resp, err := s.truncated(resp, &r)
			return resp, &r, err
		}
	}
	return resp, &r, err
}

// parseEDNS reads the OPT record, if any, from the rest of a query.
func parseEDNS(p *dnsmessage.Parser) (edns, error) {
	var e edns
	if err := p.SkipAllQuestions(); err != nil { // moves the parser past the question read
		return e, err
	}
	if err := p.SkipAllAnswers(); err != nil {
		return e, err
	}
	if err := p.SkipAllAuthorities(); err != nil {
		return e, err
	}
	for {
		rh, err := p.AdditionalHeader()
		if err == dnsmessage.ErrSectionDone {
			return e, nil
		}
		if err != nil {
			return e, err
		}
		if rh.Type == dnsmessage.TypeOPT {
			if e.present {
				return e, errors.New("more than one OPT record")
			}
			e = edns{present: true, size: int(rh.Class), do: rh.DNSSECAllowed()}
		}
		if err := p.SkipAdditional(); err != nil {
			return e, err
		}
	}
}

// answer routes a well-formed query.
func (s *Server) answer(ctx context.Context, r *req) ([]byte, error) {
	if r.q.Class != dnsmessage.ClassINET {
		return s.reply(r.h, &r.q, r.e, dnsmessage.RCodeRefused, nil)
	}
	r.host = hostOf(&r.q.Name)
	if r.q.Type == dnsmessage.TypePTR && s.pool != nil {
		if a, ok := parseReverse(r.host); ok && s.pool.Contains(a) {
			return s.answerPTR(r, a)
		}
	}
	route := s.route(r.host)
	switch route {
	case RouteDirect:
		return s.forward(ctx, r, s.direct, route)
	case RouteFakeIP:
		if s.pool != nil && (r.q.Type == dnsmessage.TypeA || r.q.Type == dnsmessage.TypeAAAA) {
			return s.answerFake(r)
		}
	}
	return s.forward(ctx, r, s.proxyResolver(r.host), RouteProxy)
}

// proxyResolver is the resolver for a name that needs a real answer from
// the far side of a proxy.
func (s *Server) proxyResolver(host string) Resolver {
	if s.proxyFor != nil {
		return s.proxyFor(host)
	}
	return s.proxy
}

// route decides where a name goes.
func (s *Server) route(host string) Route {
	if host == "" || s.filter.Match(host) {
		return RouteDirect
	}
	if s.decide == nil {
		if s.pool != nil {
			return RouteFakeIP
		}
		return RouteDirect
	}
	switch rt := s.decide(host); rt {
	case RouteFakeIP, RouteDirect:
		return rt
	}
	return RouteProxy
}

// answerFake answers A or AAAA from the pool.
func (s *Server) answerFake(r *req) ([]byte, error) {
	r.fake = true
	v6 := r.q.Type == dnsmessage.TypeAAAA
	a, err := s.pool.lookup(r.host, v6)
	switch {
	case errors.Is(err, errFamilyOff):
		return s.reply(r.h, &r.q, r.e, dnsmessage.RCodeSuccess, nil) // no IPv6: empty answer
	case errors.Is(err, errInvalidHost):
		return s.reply(r.h, &r.q, r.e, dnsmessage.RCodeNameError, nil)
	case err != nil:
		resp, _ := s.reply(r.h, &r.q, r.e, dnsmessage.RCodeServerFailure, nil)
		return resp, err
	}
	rh := dnsmessage.ResourceHeader{Name: r.q.Name, Type: r.q.Type, Class: dnsmessage.ClassINET, TTL: uint32(s.pool.ttl / time.Second)}
	return s.reply(r.h, &r.q, r.e, dnsmessage.RCodeSuccess, func(b *dnsmessage.Builder) error {
		if v6 {
			return b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
		return b.AResource(rh, dnsmessage.AResource{A: a.As4()})
	})
}

// answerPTR answers a reverse query for an address in the pool's ranges.
func (s *Server) answerPTR(r *req, a netip.Addr) ([]byte, error) {
	r.fake = true
	host, ok := s.pool.Reverse(a)
	if !ok {
		return s.reply(r.h, &r.q, r.e, dnsmessage.RCodeNameError, nil)
	}
	target, err := dnsmessage.NewName(host + ".")
	if err != nil {
		return s.reply(r.h, &r.q, r.e, dnsmessage.RCodeNameError, nil)
	}
	rh := dnsmessage.ResourceHeader{Name: r.q.Name, Type: dnsmessage.TypePTR, Class: dnsmessage.ClassINET, TTL: uint32(s.pool.ttl / time.Second)}
	return s.reply(r.h, &r.q, r.e, dnsmessage.RCodeSuccess, func(b *dnsmessage.Builder) error {
		return b.PTRResource(rh, dnsmessage.PTRResource{PTR: target})
	})
}

// forward sends the query to res (the resolver of route), through the cache.
func (s *Server) forward(ctx context.Context, r *req, res Resolver, route Route) ([]byte, error) {
	if res == nil {
		resp, _ := s.reply(r.h, &r.q, r.e, dnsmessage.RCodeServerFailure, nil)
		return resp, fmt.Errorf("dns: no %s resolver configured for %s %s", route, r.q.Type, r.host)
	}
	now := s.now()
	var key string
	if s.cache != nil {
		key = cacheKey(r, route)
		if m, elapsed, ttl, ok := s.cache.get(key, now); ok {
			if resp, err := s.repack(m, r, elapsed, ttl, false); err == nil {
				s.names.learn(m)
				return resp, nil
			}
		}
	}
	resp, err := res.Exchange(ctx, r.raw)
	if err != nil {
		s.log.Debug("dns: forward failed", "route", route, "name", r.host, "type", r.q.Type, "err", err)
		resp, _ := s.reply(r.h, &r.q, r.e, dnsmessage.RCodeServerFailure, nil)
		return resp, fmt.Errorf("dns: %s resolver: %w", route, err)
	}
	var m dnsmessage.Message
	if err := checkResponse(resp, r.h.ID, &r.q, false); err != nil {
		resp, _ := s.reply(r.h, &r.q, r.e, dnsmessage.RCodeServerFailure, nil)
		return resp, fmt.Errorf("dns: %s resolver: %w", route, err)
	}
	if err := m.Unpack(resp); err == nil {
		s.names.learn(&m)
		if ttl, ok := s.cacheTTL(&m); ok {
			if s.cache != nil {
				s.cache.put(key, &m, now, ttl)
			}
			if out, err := s.repack(&m, r, 0, ttl, true); err == nil {
				return out, nil
			}
		}
	}
	// Not cacheable (or not understood by dnsmessage): pass it on as is.
	out := make([]byte, len(resp))
	copy(out, resp)
	out[0], out[1] = byte(r.h.ID>>8), byte(r.h.ID)
	return out, nil
}

// cacheTTL returns how long m may be cached: the smallest TTL of its
// answers, or for a negative answer the SOA's negative TTL (RFC 2308),
// clamped to MinTTL..MaxTTL. ok is false when m must not be cached.
func (s *Server) cacheTTL(m *dnsmessage.Message) (time.Duration, bool) {
	if m.Header.Truncated {
		return 0, false
	}
	var ttl uint32
	switch {
	case m.Header.RCode == dnsmessage.RCodeSuccess && len(m.Answers) > 0:
		ttl = ^uint32(0)
		for _, rr := range m.Answers {
			ttl = min(ttl, rr.Header.TTL)
		}
	case m.Header.RCode == dnsmessage.RCodeSuccess || m.Header.RCode == dnsmessage.RCodeNameError:
		found := false
		for _, rr := range m.Authorities {
			if soa, ok := rr.Body.(*dnsmessage.SOAResource); ok {
				ttl, found = min(rr.Header.TTL, soa.MinTTL), true
				break
			}
		}
		if !found {
			return 0, false
		}
	default:
		return 0, false
	}
	d := time.Duration(min(ttl, 1<<31-1)) * time.Second
	d = max(d, s.minTTL)
	d = min(d, s.maxTTL)
	return d, d >= time.Second
}

// repack builds the answer to r from m, a cached response elapsed into its
// cache lifetime ttl: r's ID and question, and every TTL aged by elapsed and
// capped at what is left of ttl. Unless own (m answers r's own exchange), the
// EDNS options are dropped.
func (s *Server) repack(m *dnsmessage.Message, r *req, elapsed, ttl time.Duration, own bool) ([]byte, error) {
	age := uint32(elapsed / time.Second)
	left := uint32((ttl - elapsed + time.Second - 1) / time.Second)
	out := *m
	out.Header.ID = r.h.ID
	out.Header.RecursionDesired = r.h.RecursionDesired
	out.Questions = []dnsmessage.Question{r.q}
	out.Answers = agedRRs(m.Answers, age, left, true)
	out.Authorities = agedRRs(m.Authorities, age, left, true)
	out.Additionals = agedRRs(m.Additionals, age, left, own)
	return out.AppendPack(make([]byte, 0, 512))
}

func agedRRs(rrs []dnsmessage.Resource, age, left uint32, keepOpts bool) []dnsmessage.Resource {
	if len(rrs) == 0 {
		return nil
	}
	out := make([]dnsmessage.Resource, len(rrs))
	copy(out, rrs)
	for i := range out {
		h := &out[i].Header
		if h.Type == dnsmessage.TypeOPT {
			// Its TTL field holds flags. Its options (cookies, client
			// subnet, padding) belong to the exchange that was cached, not
			// to this one: a client would reject another's cookie.
			if !keepOpts {
				out[i].Body = &dnsmessage.OPTResource{}
			}
			continue
		}
		if h.TTL > age {
			h.TTL -= age
		} else {
			h.TTL = 0
		}
		h.TTL = min(h.TTL, left)
	}
	return out
}

// checkResponse checks that resp answers a query with the given ID (unless
// anyID) and question. A response without a question is accepted only when
// it reports an error (some servers answer FORMERR or NOTIMP that way).
func checkResponse(resp []byte, id uint16, q *dnsmessage.Question, anyID bool) error {
	var p dnsmessage.Parser
	h, err := p.Start(resp)
	if err != nil {
		return fmt.Errorf("malformed response: %w", err)
	}
	if !h.Response {
		return errors.New("malformed response: QR bit not set")
	}
	if !anyID && h.ID != id {
		return fmt.Errorf("response ID %d does not match query ID %d", h.ID, id)
	}
	switch qd := int(resp[4])<<8 | int(resp[5]); {
	case qd == 0 && h.RCode != dnsmessage.RCodeSuccess:
		return nil
	case qd != 1:
		return fmt.Errorf("response has %d questions", qd)
	}
	rq, err := p.Question()
	if err != nil {
		return fmt.Errorf("malformed response question: %w", err)
	}
	if rq.Type != q.Type || rq.Class != q.Class || !equalFoldName(&rq.Name, &q.Name) {
		return fmt.Errorf("response question %s %s does not match query %s %s", rq.Name, rq.Type, q.Name, q.Type)
	}
	return nil
}

func equalFoldName(a, b *dnsmessage.Name) bool {
	if a.Length != b.Length {
		return false
	}
	for i := 0; i < int(a.Length); i++ {
		x, y := a.Data[i], b.Data[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// reply builds a response to h with the given question (nil for none) and
// rcode; add, when not nil, writes the answer section.
func (s *Server) reply(h dnsmessage.Header, q *dnsmessage.Question, e edns, rcode dnsmessage.RCode, add func(*dnsmessage.Builder) error) ([]byte, error) {
	rh := dnsmessage.Header{
		ID:                 h.ID,
		Response:           true,
		OpCode:             h.OpCode,
		RecursionDesired:   h.RecursionDesired,
		RecursionAvailable: true,
		CheckingDisabled:   h.CheckingDisabled,
		RCode:              rcode,
	}
	return buildReply(rh, q, e, add)
}

func buildReply(rh dnsmessage.Header, q *dnsmessage.Question, e edns, add func(*dnsmessage.Builder) error) ([]byte, error) {
	b := dnsmessage.NewBuilder(make([]byte, 0, 512), rh)
	err := b.StartQuestions()
	if err == nil && q != nil {
		err = b.Question(*q)
	}
	if err == nil && add != nil {
		if err = b.StartAnswers(); err == nil {
			err = add(&b)
		}
	}
	if err == nil && e.present {
		if err = b.StartAdditionals(); err == nil {
			var opt dnsmessage.ResourceHeader
			_ = opt.SetEDNS0(ednsUDPSize, dnsmessage.RCodeSuccess, e.do)
			err = b.OPTResource(opt, dnsmessage.OPTResource{})
		}
	}
	if err != nil {
		return nil, fmt.Errorf("dns: build response: %w", err)
	}
	resp, err := b.Finish()
	if err != nil {
		return nil, fmt.Errorf("dns: build response: %w", err)
	}
	return resp, nil
}

// truncated replaces resp, too large for the client, by its header with the
// TC bit set and the question.
func (s *Server) truncated(resp []byte, r *req) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(resp)
	if err != nil {
		return nil, fmt.Errorf("dns: truncate response: %w", err)
	}
	h.Truncated = true
	h.ID = r.h.ID
	return buildReply(h, &r.q, r.e, nil)
}

// hostOf returns n in lower case without the trailing dot; "" for the root.
func hostOf(n *dnsmessage.Name) string {
	l := int(n.Length)
	if l > 0 && n.Data[l-1] == '.' {
		l--
	}
	b := make([]byte, l)
	for i := range l {
		c := n.Data[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
	}
	return string(b)
}

// parseReverse parses a reverse-lookup name (d.c.b.a.in-addr.arpa or the
// 32-nibble ip6.arpa form, lower case, no trailing dot) into an address.
func parseReverse(host string) (netip.Addr, bool) {
	const v4Suffix, v6Suffix = ".in-addr.arpa", "ip6.arpa"
	if len(host) > len(v4Suffix) && host[len(host)-len(v4Suffix):] == v4Suffix {
		var b [4]byte
		rest := host[:len(host)-len(v4Suffix)]
		for i := 3; i >= 0; i-- {
			label := rest
			if i > 0 {
				dot := strings.IndexByte(rest, '.')
				if dot < 0 {
					return netip.Addr{}, false
				}
				label, rest = rest[:dot], rest[dot+1:]
			} else if strings.IndexByte(rest, '.') >= 0 {
				return netip.Addr{}, false
			}
			n, err := strconv.ParseUint(label, 10, 8)
			if err != nil || (len(label) > 1 && label[0] == '0') {
				return netip.Addr{}, false
			}
			b[i] = byte(n)
		}
		return netip.AddrFrom4(b), true
	}
	if len(host) == 64+len(v6Suffix) && host[64:] == v6Suffix {
		var b [16]byte
		for i := range 32 {
			c, sep := host[2*i], host[2*i+1]
			if sep != '.' {
				return netip.Addr{}, false
			}
			var v byte
			switch {
			case '0' <= c && c <= '9':
				v = c - '0'
			case 'a' <= c && c <= 'f':
				v = c - 'a' + 10
			default:
				return netip.Addr{}, false
			}
			// The first nibble in the name is the address's last.
			pos := 31 - i
			if pos%2 == 0 {
				b[pos/2] |= v << 4
			} else {
				b[pos/2] |= v
			}
		}
		return netip.AddrFrom16(b), true
	}
	return netip.Addr{}, false
}

// cacheKey identifies a forwarded answer: name, type, class, route, and
// the DO and CD bits, which change what an upstream returns.
func cacheKey(r *req, route Route) string {
	var flags byte
	if r.e.do {
		flags |= 1
	}
	if r.h.CheckingDisabled {
		flags |= 2
	}
	b := make([]byte, 0, len(r.host)+7)
	b = append(b, r.host...)
	b = append(b, 0, byte(r.q.Type>>8), byte(r.q.Type), byte(r.q.Class>>8), byte(r.q.Class), byte(route), flags)
	return string(b)
}
