// Package lb chooses backends for service frontends: stable backend IDs and Maglev lookup tables.
package lb

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
)

// DefaultMaglevTableSize is the default number of slots in a Maglev lookup
// table. It is prime, as the algorithm requires. Each of N backends owns
// floor(M/N) or ceil(M/N) slots, so with up to about 160 backends (the paper
// recommends M > 100*N) their shares differ by at most 1%.
const DefaultMaglevTableSize = 16381

const (
	// maglevMinTableSize is the smallest accepted table size (the size of
	// the worked example in the Maglev paper).
	maglevMinTableSize = 7
	// maglevMaxTableSize is the largest accepted table size (2^17-1, a
	// Mersenne prime); it bounds the memory of one table in the dataplane.
	maglevMaxTableSize = 131071
)

// MaglevBackend is one backend as seen by the Maglev table builder.
type MaglevBackend struct {
	// ID is the value stored in the lookup table slots owned by this
	// backend.
	ID uint32
	// Key is a stable name of the backend, such as "10.244.1.5:8080/TCP".
	// The backend's preference list is derived from Key alone, so every
	// node computes the same table for the same set of keys. Keys must be
	// unique within one table.
	Key string
}

// ValidMaglevTableSize reports whether m can be used as a Maglev lookup table
// size: it must be a prime between 7 and 131071 inclusive. The returned error
// explains what is wrong and suggests DefaultMaglevTableSize.
func ValidMaglevTableSize(m uint64) error {
	switch {
	case m < maglevMinTableSize:
		return fmt.Errorf("maglev table size %d is too small: it must be a prime of at least %d (the default is %d)",
			m, maglevMinTableSize, DefaultMaglevTableSize)
	case m > maglevMaxTableSize:
		return fmt.Errorf("maglev table size %d is too large: it must be a prime of at most %d (the default is %d)",
			m, maglevMaxTableSize, DefaultMaglevTableSize)
	case !isPrime(m):
		return fmt.Errorf("maglev table size %d is not prime: the permutations only cover every slot when it is prime (the default is %d)",
			m, DefaultMaglevTableSize)
	}
	return nil
}

// isPrime reports whether m is prime, by trial division; it is meant for the
// small values accepted by ValidMaglevTableSize.
func isPrime(m uint64) bool {
	if m < 2 {
		return false
	}
	if m%2 == 0 {
		return m == 2
	}
	for d := uint64(3); d*d <= m; d += 2 {
		if m%d == 0 {
			return false
		}
	}
	return true
}

// maglevHashes returns the two hashes of a backend key used by the paper's
// h1 (offset) and h2 (skip): the first and second big-endian 64-bit words of
// SHA-256(key). They are independent, and identical on every machine and in
// every process. Changing them reshuffles every table, so nodes running
// different versions would disagree; treat them as part of the wire format.
func maglevHashes(key string) (h1, h2 uint64) {
	sum := sha256.Sum256([]byte(key))
	return binary.BigEndian.Uint64(sum[0:8]), binary.BigEndian.Uint64(sum[8:16])
}

// maglevOffsetSkip returns the paper's offset = h1(key) mod m and
// skip = h2(key) mod (m-1) + 1. m must be at least 2.
func maglevOffsetSkip(key string, m uint64) (offset, skip uint64) {
	h1, h2 := maglevHashes(key)
	return h1 % m, h2%(m-1) + 1
}

// MaglevPermutation returns the preference list of the backend named key in
// a table of m slots: permutation[j] = (offset + j*skip) mod m, where
// offset = h1(key) mod m and skip = h2(key) mod (m-1) + 1. When m is prime
// (see ValidMaglevTableSize) the result is a permutation of 0..m-1; for other
// m it may repeat slots. It returns nil if m < 2.
func MaglevPermutation(key string, m uint64) []uint64 {
	if m < 2 {
		return nil
	}
	offset, skip := maglevOffsetSkip(key, m)
	perm := make([]uint64, m)
	c := offset
	for j := range perm {
		perm[j] = c
		// c = (offset + (j+1)*skip) mod m, without a multiplication or
		// overflow: both c and skip are below m.
		c += skip
		if c >= m {
			c -= m
		}
	}
	return perm
}

// MaglevTable builds a Maglev lookup table of m slots for backends, following
// Pseudo-code 1 of the Maglev paper (Eisenbud et al., NSDI 2016, section
// 3.4): the backends take turns, and on its turn each backend claims the
// first slot of its preference list (see MaglevPermutation) that is still
// empty, until every slot is owned. Each entry of the result is the ID of the
// slot's owner. Every backend owns either floor(m/N) or ceil(m/N) slots.
//
// Backends are processed in order of Key, so the table depends only on the
// set of backends and m, not on the order of the slice, which is not
// modified. MaglevTable returns an error if m is not a valid size (see
// ValidMaglevTableSize), if backends is empty, if two backends share a Key,
// or if there are more backends than slots.
func MaglevTable(backends []MaglevBackend, m uint64) ([]uint32, error) {
	if err := ValidMaglevTableSize(m); err != nil {
		return nil, err
	}
	if len(backends) == 0 {
		return nil, fmt.Errorf("cannot build a maglev table for zero backends: the caller should not build a table for a frontend without backends")
	}
	if uint64(len(backends)) > m {
		return nil, fmt.Errorf("%d backends do not fit in a maglev table of %d slots: use a larger prime table size", len(backends), m)
	}

	sorted := slices.Clone(backends)
	slices.SortFunc(sorted, func(a, b MaglevBackend) int { return strings.Compare(a.Key, b.Key) })
	for i := 1; i < len(sorted); i++ {
		if sorted[i].Key == sorted[i-1].Key {
			return nil, fmt.Errorf("duplicate maglev backend key %q (ids %d and %d): keys must be unique", sorted[i].Key, sorted[i-1].ID, sorted[i].ID)
		}
	}

	// The permutations are computed lazily from offset and skip, as the
	// paper suggests, instead of materialising N lists of m slots.
	offsets := make([]uint64, len(sorted))
	skips := make([]uint64, len(sorted))
	for i, b := range sorted {
		offsets[i], skips[i] = maglevOffsetSkip(b.Key, m)
	}
	owners := maglevPopulate(len(sorted), m, func(i int, j uint64) uint64 {
		// j < m and skips[i] < m <= maglevMaxTableSize, so j*skips[i]
		// cannot overflow.
		return (offsets[i] + j*skips[i]) % m
	})

	table := make([]uint32, m)
	for slot, i := range owners {
		table[slot] = sorted[i].ID
	}
	return table, nil
}

// maglevPopulate is Pseudo-code 1 of the Maglev paper. n is the number of
// backends, m the table size, and pref(i, j) is permutation[i][j], the j-th
// preferred slot of backend i; for every i, pref(i, 0..m-1) must be a
// permutation of 0..m-1. It returns, for each slot, the index of the backend
// that owns it. It returns nil if n or m is zero.
func maglevPopulate(n int, m uint64, pref func(i int, j uint64) uint64) []int {
	if n == 0 || m == 0 {
		return nil
	}
	next := make([]uint64, n)
	entry := make([]int, m)
	for slot := range entry {
		entry[slot] = -1
	}
	var filled uint64
	for {
		for i := 0; i < n; i++ {
			c := pref(i, next[i])
			for entry[c] >= 0 {
				next[i]++
				if next[i] >= m {
					// Unreachable when pref is a permutation: fewer
					// than m slots are filled, so one is still free.
					panic(fmt.Sprintf("lb: maglev preference list of backend %d is not a permutation of 0..%d", i, m-1))
				}
				c = pref(i, next[i])
			}
			entry[c] = i
			next[i]++
			filled++
			if filled == m {
				return entry
			}
		}
	}
}
