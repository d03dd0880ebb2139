//go:build cgo && !osusergo

package main

// osUserNSS: os/user asks the C library, so NSS (see userDB).
const osUserNSS = true
