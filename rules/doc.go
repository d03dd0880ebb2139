// Package rules parses Clash-style rule lists and decides, per flow, which
// target carries it. It is pure: text in, decisions out; it opens RULE-SET
// files through an injected loader, and never touches the network or
// resolves a name.
//
// # Syntax
//
// One rule per line, TYPE,PAYLOAD,TARGET; the first rule that matches wins.
// Blank lines and lines starting with # are ignored. Rule types are
// case-insensitive; domains are compared case-insensitively with a trailing
// dot ignored.
//
//	DOMAIN,example.com,TARGET          the name exactly
//	DOMAIN-SUFFIX,example.com,TARGET   the name and all its subdomains
//	DOMAIN-KEYWORD,goog,TARGET         the name contains the word
//	DOMAIN-REGEX,^ad[0-9]+\.,TARGET    Go RE2 regexp on the lower-case name
//	IP-CIDR,10.0.0.0/8,TARGET          destination address (IP-CIDR6 is the same)
//	SRC-IP-CIDR,192.168.1.0/24,TARGET  source address
//	DST-PORT,443,TARGET                also 1000-2000 and 80/443/8000-9000
//	SRC-PORT,5000-6000,TARGET
//	NETWORK,udp,TARGET                 tcp or udp
//	PROCESS-NAME,curl,TARGET           base name of the executable
//	PROCESS-PATH,/usr/bin/curl,TARGET  full path of the executable
//	UID,1000,TARGET                    owning user; ranges and lists as for ports
//	IN-TYPE,tun,TARGET                 the inbound's type: tun, wireguard, exec, gateway or socks
//	IN-NAME,exec:curl,TARGET           the inbound's name (a TUN device name, wg, exec:NAME, socks)
//	IN-USER,alice,TARGET               the user behind the inbound (WireGuard peer, SOCKS username)
//	AND,((DOMAIN,example.com),(NETWORK,udp)),TARGET
//	OR,((DST-PORT,53),(AND,((NETWORK,udp),(DST-PORT,443)))),TARGET
//	NOT,((DOMAIN-SUFFIX,lan)),TARGET
//	RULE-SET,path/to/file,TARGET       every line of the file, with this target
//	MATCH,TARGET                       everything (usually last)
//
// TARGET is DIRECT, REJECT, REJECT-DROP or a proxy or chain name known to
// ParseOptions.Targets. IP rules accept a trailing ",no-resolve" for
// compatibility; it changes nothing, since matching never resolves: an IP
// rule matches only flows whose destination is a real address (Metadata.Host
// empty, or Metadata.RealDst for a name sniffed from a flow to a real
// address), never a flow known only by name.
//
// A RULE-SET file holds one entry per line, auto-detected: a rule without
// target (DOMAIN-KEYWORD,ads), a CIDR or bare address (10.0.0.0/8,
// 2001:db8::1), or a domain: example.com (exactly), +.example.com or
// .example.com (the domain and its subdomains), *.example.com (exactly one
// label more). Clash's YAML provider form (payload: followed by - 'entry'
// lines) is accepted too.
//
// # Errors
//
// A bad line yields a *ParseError reading "file:line: what is wrong; what
// would be right". Up to 10 are collected and returned with errors.Join.
//
// # Speed
//
// Domain, IP-CIDR and SRC-IP-CIDR rules (including RULE-SET contents) are
// compiled into a label-walked hash map and prefix tables that return the
// smallest matching rule number, so first-match-wins holds across the whole
// list while a match costs a handful of lookups; other rules are tried in
// order only while they come before the best indexed hit.
package rules
