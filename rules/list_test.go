package rules

import (
	"reflect"
	"testing"
)

// TestRules lists the rules as written, each split into its keyword,
// payload and target, for the API's /rules.
func TestRules(t *testing.T) {
	rs := mustParse(t, "DOMAIN-SUFFIX, example.com ,corp\n"+
		"IP-CIDR,10.0.0.0/8,DIRECT,no-resolve\n"+
		"AND,((DST-PORT,22),(NETWORK,tcp)),corp\n"+
		"RULE-SET,domains.txt,REJECT\n"+
		"match,DIRECT\n")
	want := []Rule{
		{Index: 0, Type: "DOMAIN-SUFFIX", Payload: "example.com", Action: Action{Kind: Proxy, Target: "corp"},
			Text: "DOMAIN-SUFFIX, example.com ,corp", Source: "rules.txt:1", Size: -1},
		{Index: 1, Type: "IP-CIDR", Payload: "10.0.0.0/8", Action: Action{Kind: Direct},
			Text: "IP-CIDR,10.0.0.0/8,DIRECT,no-resolve", Source: "rules.txt:2", Size: -1},
		{Index: 2, Type: "AND", Payload: "((DST-PORT,22),(NETWORK,tcp))", Action: Action{Kind: Proxy, Target: "corp"},
			Text: "AND,((DST-PORT,22),(NETWORK,tcp)),corp", Source: "rules.txt:3", Size: -1},
		{Index: 3, Type: "RULE-SET", Payload: "domains.txt", Action: Action{Kind: Reject},
			Text: "RULE-SET,domains.txt,REJECT", Source: "rules.txt:4", Size: len(mustParse(t, "RULE-SET,domains.txt,REJECT\n").entries)},
		{Index: 4, Type: "MATCH", Action: Action{Kind: Direct}, Text: "match,DIRECT", Source: "rules.txt:5", Size: -1},
	}
	got := rs.Rules()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Rules():\n got %+v\nwant %+v", got, want)
	}
	if want[3].Size < 2 {
		t.Errorf("the RULE-SET's size %d: the set has more lines", want[3].Size)
	}
	mt := rs.Match(&Metadata{Network: "tcp", Host: "www.example.com", UID: -1}, nil)
	if mt.Type != "DOMAIN-SUFFIX" || mt.Payload != "example.com" {
		t.Errorf("Match type %q payload %q", mt.Type, mt.Payload)
	}
	var nilSet *Ruleset
	if nilSet.Rules() != nil {
		t.Error("a nil Ruleset lists rules")
	}
}
