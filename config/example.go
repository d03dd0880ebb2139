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
