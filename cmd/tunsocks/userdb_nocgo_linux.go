//go:build !cgo || osusergo

package main

// osUserNSS: os/user reads /etc/passwd and /etc/group only (see userDB).
const osUserNSS = false
