package policy

import (
	"context"
	"net/netip"
	"testing"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/tunsocks/tunsocks/dns"
)

// newDNS is a DNS server deciding by e's policy, whose nameserver answers
// every query with addr.
func newDNS(t *testing.T, e *env, addr string) *dns.Server {
	t.Helper()
	srv, err := dns.NewServer(dns.Config{Pool: e.pool, Names: e.names, Decide: e.p.DNSRoute, ProxyFor: e.p.DNSResolver, Direct: answerA(addr)})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

const dnsTXT = uint16(dnsmessage.TypeTXT)

// query builds a query for name; typ 1 is A.
func query(t *testing.T, name string, typ uint16) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 1, RecursionDesired: true})
	b.StartQuestions()
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: dnsmessage.Type(typ), Class: dnsmessage.ClassINET}); err != nil {
		t.Fatal(err)
	}
	q, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// answerA is a resolver that answers every query with one A record.
type answerA string

func (a answerA) Exchange(_ context.Context, q []byte) ([]byte, error) {
	var m dnsmessage.Message
	if err := m.Unpack(q); err != nil {
		return nil, err
	}
	m.Header.Response = true
	m.Answers = []dnsmessage.Resource{{
		Header: dnsmessage.ResourceHeader{Name: m.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 300},
		Body:   &dnsmessage.AResource{A: netip.MustParseAddr(string(a)).As4()},
	}}
	return m.Pack()
}
