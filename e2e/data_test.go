package e2e

import (
	"crypto/sha256"
	"hash"
	"io"
	"math/rand/v2"
)

func newHash() hash.Hash { return sha256.New() }

// newStream is a deterministic pseudo-random byte stream, cheap to make and
// to reproduce on both ends.
func newStream() io.Reader { return &stream{r: rand.NewChaCha8([32]byte{'t', 's', 'k'})} }

type stream struct{ r *rand.ChaCha8 }

func (s *stream) Read(p []byte) (int, error) { return s.r.Read(p) }
