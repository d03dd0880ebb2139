package config

// Example returns a commented example config (for
// `tunsocks run --print-example-config`). It parses and validates as is;
// every value shown is the default unless the comment says otherwise.
func Example() string {
	return `# tunsocks run --config tunsocks.yaml
#
# Every flag of 'tunsocks run' has a key here; flags given on the command
# line override the file. Durations are written like 30s, 5m or 1h30m.

# The default upstream when no rules are given: "direct", a URL
# (socks5://[user:pass@]host:port, socks5h://, socks4://, socks4a://,
# http://) or the name of an entry under proxies.
proxy: corp

tun:
  name: tunsocks0          # device to create, or attach to
  fd: -1                   # adopt an open descriptor instead (Android VpnService)
  addrs:                   # addresses of the device
    - 198.18.0.1/15
    - fc00::1/18
  mtu: 1500                # 576 to 65535; IPv6 addresses need 1280
  offload: true            # TSO/GRO offload (Linux)
  pcap: ""                 # write every packet to this pcap file

tcp-idle: 10m              # close TCP flows idle this long
udp-idle: 60s              # expire UDP flows idle this long
dns-idle: 10s              # expire UDP flows to port 53 idle this long
dial-timeout: 10s          # time to reach the upstream before the app gets a RST
summary-interval: 5s       # log a one-line summary this often (0: never)

fwmark: 0                  # SO_MARK on tunsocks' own sockets (0: none)
out-interface: ""          # bind tunsocks' own sockets to this interface

tcp-sack: true             # selective acknowledgements in the netstack
tcp-moderate-rcvbuf: true  # grow receive buffers as throughput needs
tcp-buf: 4194304           # max TCP buffer per flow, bytes (65536 to 67108864)
tcp-cc: cubic              # cubic or reno
tcp-stack: gvisor          # who terminates the app's TCP: gvisor or system (the host kernel)
tcp-ack-delay: 20ms        # hold an ACK this long for a reply to carry it (0: off)

# Sniffing: a flow to a real address (an app that resolved the name itself,
# with DNS over HTTPS or a cached address) gets its name from its first
# bytes: TLS server_name, HTTP Host, the ClientHello of a QUIC Initial.
# Such a flow's handshake completes before the upstream is dialed, so a
# refused upstream closes it instead of refusing its SYN; flows that need
# no name keep being dialed first.
sniff: auto                # auto: when a domain rule could match the flow; true: every flow; false
sniff-timeout: 300ms       # wait this long for the first bytes, then go by address (10ms to 10s)
sniff-override-destination: true  # give the upstream the name; false: the address (rules still see the name)
sniff-ports: []            # sniff only flows to these ports, e.g. [443, 80, 8000-9000]; empty: all
sniff-cidrs: []            # sniff only flows to these destinations; empty: all
sniff-server-first-ports: [21-23, 25, 110, 143, 587, 3306, 5900]  # dialed at once: the server speaks first

# What one app, device or flood can take (see README, "Limits").
max-memory: 1GiB           # near this, new flows are refused and the flows idle the longest closed (0: none)
# The netstack's bounds; unset or 0 means the default shown.
# tcp-max-in-flight: 1024            # TCP connection attempts in flight; the oldest is shed
# tcp-max-in-flight-per-source: 512  # the same per app source address
# tcp-handshake-timeout: 5s          # an accepted attempt's app must complete its handshake by then
# udp-max-flows: 2048                # UDP flows open at once; the least recently active is closed
# udp-max-flows-per-source: 512      # the same per app source address
# udp-flow-rate: 1000                # new UDP flows a second; datagrams beyond are dropped
# udp-flow-rate-per-source: 250      # the same per app source address

# Named upstreams for rules. Each has a url or a chain (not both).
proxies:
  - name: corp
    url: socks5://user:secret@10.0.0.1:1080
  - name: burp             # an HTTP CONNECT proxy (default port 8080)
    url: http://127.0.0.1:8080
  - name: jump
    url: socks4a://bastion.example.com:1080
  - name: corp-via-jump    # reaches corp through jump
    chain: [jump, corp]

# Rules, first match wins; a flow no rule matches goes DIRECT.
# Targets: DIRECT, REJECT, REJECT-DROP or a proxy name from above.
# Types: DOMAIN, DOMAIN-SUFFIX, DOMAIN-KEYWORD, DOMAIN-REGEX, IP-CIDR,
# IP-CIDR6, SRC-IP-CIDR, DST-PORT, SRC-PORT, NETWORK, PROCESS-NAME,
# PROCESS-PATH, UID, AND, OR, NOT, RULE-SET, MATCH.
rules:
  - DOMAIN-SUFFIX,internal.example.com,corp
  - DOMAIN-KEYWORD,tracker,REJECT
  - IP-CIDR,10.0.0.0/8,corp-via-jump
  - AND,((NETWORK,tcp),(DST-PORT,8443)),burp
  - PROCESS-NAME,curl,burp
  # - RULE-SET,lists/ads.txt,REJECT   (path relative to this file)
  - IP-CIDR,192.168.0.0/16,DIRECT
  - MATCH,DIRECT

dns:
  # enable: true           # the fake-IP DNS responder (unset: tunsocks run decides)
  listen: ""               # an extra UDP listener, e.g. 127.0.0.1:5353
  fake-ip-range: 198.18.0.0/15
  fake-ip-range6: fc00::/18  # "" disables IPv6 fake addresses
  fake-ip-ttl: 10s         # TTL of fake answers, 1s to 1h
  fake-ip-filter:          # names that get real answers instead of fake IPs
    - +.lan
    - time.*.com
  nameserver:              # resolvers for real answers: ip[:port], udp://, tcp://
    - 10.0.0.53
    - tcp://1.1.1.1:53
  dns-hijack: false        # answer every query to port 53, whatever its address
  cache-file: ""           # keep the fake-IP mappings across restarts

# The Clash-compatible API (metacubexd, yacd, zashboard), the live page at
# http://LISTEN/ui/ and /metrics. Off unless listen is set. SIGHUP or
# PUT /configs re-reads this file: new flows get the new rules and
# proxies, open flows keep theirs.
api:
  listen: ""               # e.g. 127.0.0.1:9090; other hosts' addresses need a secret
  secret: ""               # Bearer token for every request (?token= on WebSockets)
  metrics: ""              # an extra listener for /metrics alone, without the secret
  allow-origins: []        # pages that may call the API, e.g. https://metacubex.github.io; empty: any

# Routing this host (or devices behind it) into the TUN (Linux, as root).
# Everything installed is listed at start and removed on exit; after a
# crash, the next run or 'tunsocks cleanup' removes it.
route:
  auto-route: false        # every app of this host through tunsocks (fwmark defaults to 0x7473)
  kill-switch: false       # if tunsocks dies, traffic fails (ENETUNREACH) instead of going direct
  lan-access: true         # the LAN and other non-default routes stay direct
  exclude: []              # destinations that go direct, e.g. [10.0.0.0/8]
  exclude-uid: []          # users whose sockets go direct, e.g. ["1000", "2000-2999"]
  include-cgroup: []       # capture only sockets made in these cgroups (needs auto-route)
  include-uid: []          # capture only these users' sockets (needs auto-route)
  dns-config: auto         # auto, resolved (systemd-resolved's DNS for the TUN) or none
  rule-priority: 9100      # the policy rules take 9100 to 9108
  route-table: 29811       # tunsocks' routing table: one default route into the TUN
  gateway: ""              # capture what devices using this host as gateway on this interface send

# Phones and tablets join over WireGuard: their stock app scans the QR code
# tunsocks prints, and their traffic takes the rules above. 'tunsocks wg'
# runs only this inbound, with no TUN and no root.
# wireguard:
#   listen: ":51820"         # UDP; an address here is also the endpoint
#   peers: [pixel, ipad]     # added to the state file when missing
#   endpoint: ""             # host:port phones reach; "" chooses one
#   state: ""                # keys and peers; "" is ~/.config/tunsocks/wg.json
#   qr-png: ""               # write DIR/NAME.png and DIR/NAME.conf
#   qr: true                 # QR codes in the terminal
#   range: [10.7.0.0/24, fd07::/64]  # tunnel addresses
#   mtu: 1420
#   block-quic: true         # UDP/443 gets port unreachable: apps use TCP
#   block-dot: true          # TCP/853 gets a RST: Private DNS falls back
#   pcap: ""                 # every peer's packets to this file
#   pcap-peers: ""           # or one file per peer: DIR/NAME.pcap
`
}
