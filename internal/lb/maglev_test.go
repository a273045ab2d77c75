package lb

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// testBackends returns n backends with distinct pod-like keys and IDs 1..n.
func testBackends(n int) []MaglevBackend {
	bs := make([]MaglevBackend, n)
	for i := range bs {
		bs[i] = MaglevBackend{
			ID:  uint32(i + 1),
			Key: fmt.Sprintf("10.244.%d.%d:8080/TCP", i/250, i%250+1),
		}
	}
	return bs
}

func mustTable(t testing.TB, bs []MaglevBackend, m uint64) []uint32 {
	t.Helper()
	table, err := MaglevTable(bs, m)
	if err != nil {
		t.Fatalf("MaglevTable(%d backends, %d): %v", len(bs), m, err)
	}
	if uint64(len(table)) != m {
		t.Fatalf("MaglevTable returned %d slots, want %d", len(table), m)
	}
	return table
}

func TestValidMaglevTableSize(t *testing.T) {
	for _, m := range []uint64{7, 11, 251, 4099, DefaultMaglevTableSize, 65521, 131071} {
		if err := ValidMaglevTableSize(m); err != nil {
			t.Errorf("ValidMaglevTableSize(%d) = %v, want nil", m, err)
		}
	}
	for _, tc := range []struct {
		m    uint64
		want string
	}{
		{0, "too small"},
		{2, "too small"},
		{5, "too small"},
		{8, "not prime"},
		{9, "not prime"},
		{16383, "not prime"}, // 3 * 43 * 127
		{16384, "not prime"},
		{131073, "too large"}, // 3 * 43691, but the bound comes first
		{262139, "too large"}, // prime
	} {
		err := ValidMaglevTableSize(tc.m)
		if err == nil {
			t.Errorf("ValidMaglevTableSize(%d) = nil, want error containing %q", tc.m, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "16381") {
			t.Errorf("ValidMaglevTableSize(%d) = %q, want it to contain %q and the default 16381", tc.m, err, tc.want)
		}
	}
}

func TestIsPrime(t *testing.T) {
	var got []uint64
	for m := uint64(0); m < 50; m++ {
		if isPrime(m) {
			got = append(got, m)
		}
	}
	want := []uint64{2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47}
	if !slices.Equal(got, want) {
		t.Errorf("primes below 50 = %v, want %v", got, want)
	}
}

func TestMaglevPermutationFormula(t *testing.T) {
	for _, tc := range []struct {
		key string
		m   uint64
	}{
		{"10.244.1.5:8080/TCP", 7},
		{"10.244.1.5:8080/TCP", 251},
		{"10.244.1.5:8080/TCP", DefaultMaglevTableSize},
		{"10.244.1.6:8080/TCP", DefaultMaglevTableSize},
		{"[fd00::1]:53/UDP", 131071},
		{"", 11},
	} {
		perm := MaglevPermutation(tc.key, tc.m)
		if uint64(len(perm)) != tc.m {
			t.Fatalf("MaglevPermutation(%q, %d) has length %d", tc.key, tc.m, len(perm))
		}
		h1, h2 := maglevHashes(tc.key)
		offset := h1 % tc.m
		skip := h2%(tc.m-1) + 1
		seen := make([]bool, tc.m)
		for j, slot := range perm {
			if want := (offset + uint64(j)*skip) % tc.m; slot != want {
				t.Fatalf("MaglevPermutation(%q, %d)[%d] = %d, want (%d + %d*%d) mod %d = %d",
					tc.key, tc.m, j, slot, offset, j, skip, tc.m, want)
			}
			if seen[slot] {
				t.Fatalf("MaglevPermutation(%q, %d) repeats slot %d at index %d", tc.key, tc.m, slot, j)
			}
			seen[slot] = true
		}
		// Length m and no repeats: a permutation of 0..m-1.
	}
}

// TestMaglevHashesGolden pins the hash functions: every node, and every
// version of kpath, must derive the same preference lists. The expected
// values were computed outside Go (Python hashlib.sha256).
func TestMaglevHashesGolden(t *testing.T) {
	for _, tc := range []struct {
		key          string
		h1, h2       uint64
		offset, skip uint64 // for DefaultMaglevTableSize
		first        []uint64
	}{
		{"10.244.1.5:8080/TCP", 0xe2b84dd59292e68b, 0x842386d35b0d2b82, 12635, 11335, []uint64{12635, 7589, 2543, 13878, 8832}},
		{"", 0xe3b0c44298fc1c14, 0x9afbf4c8996fb924, 7829, 13065, []uint64{7829, 4513, 1197, 14262, 10946}},
	} {
		h1, h2 := maglevHashes(tc.key)
		if h1 != tc.h1 || h2 != tc.h2 {
			t.Errorf("maglevHashes(%q) = %#x, %#x, want %#x, %#x", tc.key, h1, h2, tc.h1, tc.h2)
		}
		offset, skip := maglevOffsetSkip(tc.key, DefaultMaglevTableSize)
		if offset != tc.offset || skip != tc.skip {
			t.Errorf("maglevOffsetSkip(%q) = %d, %d, want %d, %d", tc.key, offset, skip, tc.offset, tc.skip)
		}
		if got := MaglevPermutation(tc.key, DefaultMaglevTableSize)[:len(tc.first)]; !slices.Equal(got, tc.first) {
			t.Errorf("MaglevPermutation(%q) starts %v, want %v", tc.key, got, tc.first)
		}
	}
}

func TestMaglevPermutationTooSmall(t *testing.T) {
	for _, m := range []uint64{0, 1} {
		if got := MaglevPermutation("a", m); got != nil {
			t.Errorf("MaglevPermutation(\"a\", %d) = %v, want nil", m, got)
		}
	}
}

// TestMaglevPaperExample replays Table 1 of the Maglev paper: M = 7 and
// three backends with the permutations given there.
func TestMaglevPaperExample(t *testing.T) {
	const m = 7
	perms := map[string][]uint64{
		"B0": {3, 0, 4, 1, 5, 2, 6},
		"B1": {0, 2, 4, 6, 1, 3, 5},
		"B2": {3, 4, 5, 6, 0, 1, 2},
	}
	// The paper's permutations have the (offset + j*skip) mod M form that
	// MaglevPermutation produces: offset 3 skip 4, offset 0 skip 2 and
	// offset 3 skip 1.
	for name, os := range map[string][2]uint64{"B0": {3, 4}, "B1": {0, 2}, "B2": {3, 1}} {
		for j, slot := range perms[name] {
			if want := (os[0] + uint64(j)*os[1]) % m; slot != want {
				t.Fatalf("%s permutation[%d] = %d, want %d", name, j, slot, want)
			}
		}
	}

	populate := func(names ...string) []string {
		owners := maglevPopulate(len(names), m, func(i int, j uint64) uint64 { return perms[names[i]][j] })
		out := make([]string, len(owners))
		for slot, i := range owners {
			out[slot] = names[i]
		}
		return out
	}

	for _, tc := range []struct {
		name     string
		backends []string
		want     []string
	}{
		// Round 1: B0 takes 3, B1 takes 0, B2 finds 3 taken and takes 4.
		// Round 2: B0 skips 0 and 4 and takes 1, B1 takes 2, B2 takes 5.
		// Round 3: B0 skips 5 and 2 and takes 6; the table is full.
		{"before", []string{"B0", "B1", "B2"}, []string{"B1", "B0", "B1", "B0", "B2", "B2", "B0"}},
		// B1 removed. B0 takes 3, B2 takes 4; B0 takes 0, B2 takes 5;
		// B0 skips 4 and takes 1, B2 takes 6; B0 skips 5 and takes 2.
		// Slots 0 and 2 (B1's) move to B0, and slot 6 also moves, from
		// B0 to B2: Maglev trades a little disruption for balance.
		{"after removing B1", []string{"B0", "B2"}, []string{"B0", "B0", "B0", "B0", "B2", "B2", "B2"}},
	} {
		if got := populate(tc.backends...); !slices.Equal(got, tc.want) {
			t.Errorf("%s: table = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestMaglevPopulateRejectsNonPermutation(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("maglevPopulate with a repeating preference list did not panic")
		}
	}()
	// Both backends only ever want slot 0, so the second can never place.
	maglevPopulate(2, 7, func(i int, j uint64) uint64 { return 0 })
}

func TestMaglevPopulateEmpty(t *testing.T) {
	if got := maglevPopulate(0, 7, nil); got != nil {
		t.Errorf("maglevPopulate(0, 7) = %v, want nil", got)
	}
}

// referenceMaglevTable is a direct transcription of the paper's pseudo-code
// with materialised permutations, to check MaglevTable's lazy computation.
func referenceMaglevTable(bs []MaglevBackend, m uint64) []uint32 {
	bs = slices.Clone(bs)
	slices.SortFunc(bs, func(a, b MaglevBackend) int { return strings.Compare(a.Key, b.Key) })
	permutation := make([][]uint64, len(bs))
	for i, b := range bs {
		permutation[i] = MaglevPermutation(b.Key, m)
	}
	next := make([]int, len(bs))
	entry := make([]int, m)
	for j := range entry {
		entry[j] = -1
	}
	n := uint64(0)
	for n < m {
		for i := range bs {
			c := permutation[i][next[i]]
			for entry[c] >= 0 {
				next[i]++
				c = permutation[i][next[i]]
			}
			entry[c] = i
			next[i]++
			n++
			if n == m {
				break
			}
		}
	}
	table := make([]uint32, m)
	for j, i := range entry {
		table[j] = bs[i].ID
	}
	return table
}

func TestMaglevTableMatchesReference(t *testing.T) {
	for _, tc := range []struct {
		n int
		m uint64
	}{
		{1, 7}, {3, 7}, {7, 7}, {5, 251}, {100, 4099}, {100, DefaultMaglevTableSize},
	} {
		bs := testBackends(tc.n)
		got := mustTable(t, bs, tc.m)
		if want := referenceMaglevTable(bs, tc.m); !slices.Equal(got, want) {
			t.Errorf("N=%d M=%d: MaglevTable differs from the reference transcription", tc.n, tc.m)
		}
	}
}

func TestMaglevTableBalance(t *testing.T) {
	for _, tc := range []struct {
		n int
		m uint64
	}{
		{1, 7}, {3, 7}, {7, 7}, {10, DefaultMaglevTableSize}, {100, DefaultMaglevTableSize}, {1000, DefaultMaglevTableSize},
	} {
		bs := testBackends(tc.n)
		table := mustTable(t, bs, tc.m)
		counts := make(map[uint32]int, tc.n)
		for slot, id := range table {
			if id < 1 || int(id) > tc.n {
				t.Fatalf("N=%d M=%d: slot %d holds unknown ID %d", tc.n, tc.m, slot, id)
			}
			counts[id]++
		}
		if len(counts) != tc.n {
			t.Fatalf("N=%d M=%d: only %d backends own slots", tc.n, tc.m, len(counts))
		}
		lo, hi := int(tc.m), 0
		for _, c := range counts {
			lo, hi = min(lo, c), max(hi, c)
		}
		// Each round gives every backend exactly one slot, and the
		// table fills in the middle of a round.
		if wantLo := int(tc.m) / tc.n; lo != wantLo || hi-lo > 1 {
			t.Errorf("N=%d M=%d: slots per backend in [%d, %d], want [%d, %d]", tc.n, tc.m, lo, hi, wantLo, wantLo+1)
		}
	}
}

func TestMaglevTableDisruption(t *testing.T) {
	const n = 100
	const m = DefaultMaglevTableSize
	all := testBackends(n)
	base := mustTable(t, all, m)

	var sumFrac, maxFrac float64
	for r := range all {
		removed := all[r]
		rest := slices.Delete(slices.Clone(all), r, r+1)
		after := mustTable(t, rest, m)

		others, moved := 0, 0
		for slot := range base {
			if after[slot] == removed.ID {
				t.Fatalf("removed backend %d still owns slot %d", removed.ID, slot)
			}
			if base[slot] == removed.ID {
				continue // necessarily moved
			}
			others++
			if after[slot] != base[slot] {
				moved++
			}
		}
		frac := float64(moved) / float64(others)
		sumFrac += frac
		maxFrac = max(maxFrac, frac)

		// Adding the backend back restores the original table.
		if back := mustTable(t, append(rest, removed), m); !slices.Equal(back, base) {
			t.Fatalf("re-adding backend %d does not restore the original table", removed.ID)
		}
	}
	mean := sumFrac / n
	t.Logf("N=%d M=%d, removing one backend: %.2f%% of the other backends' slots change owner on average, %.2f%% at most (minimal disruption would be 0%%)",
		n, m, 100*mean, 100*maxFrac)
	// Maglev is not minimally disruptive; the paper's Figure 12 and our
	// measurement (about 1.4% mean, 1.5% max for these keys) sit well below these bounds,
	// which would catch a table that reshuffles instead.
	if mean > 0.03 || maxFrac > 0.05 {
		t.Errorf("removing one backend moved %.2f%% (mean) / %.2f%% (max) of the other slots, want at most 3%% / 5%%", 100*mean, 100*maxFrac)
	}
}

func TestMaglevTableDeterministic(t *testing.T) {
	bs := testBackends(100)
	orig := slices.Clone(bs)
	want := mustTable(t, bs, DefaultMaglevTableSize)
	if again := mustTable(t, bs, DefaultMaglevTableSize); !slices.Equal(again, want) {
		t.Fatal("same input twice gave different tables")
	}
	if !slices.Equal(bs, orig) {
		t.Fatal("MaglevTable modified its input slice")
	}

	rng := rand.New(rand.NewPCG(1, 2))
	for range 5 {
		shuffled := slices.Clone(bs)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if got := mustTable(t, shuffled, DefaultMaglevTableSize); !slices.Equal(got, want) {
			t.Fatal("shuffling the input changed the table")
		}
	}
	slices.Reverse(bs)
	if got := mustTable(t, bs, DefaultMaglevTableSize); !slices.Equal(got, want) {
		t.Fatal("reversing the input changed the table")
	}
}

func TestMaglevTableErrors(t *testing.T) {
	two := testBackends(2)
	for _, tc := range []struct {
		name     string
		backends []MaglevBackend
		m        uint64
		want     string
	}{
		{"non-prime size", two, 16383, "not prime"},
		{"size too small", two, 5, "too small"},
		{"size too large", two, 262139, "too large"},
		{"no backends", nil, DefaultMaglevTableSize, "zero backends"},
		{"empty backends", []MaglevBackend{}, DefaultMaglevTableSize, "zero backends"},
		{"duplicate key", []MaglevBackend{{1, "a"}, {2, "b"}, {3, "a"}}, DefaultMaglevTableSize, `duplicate maglev backend key "a"`},
		{"more backends than slots", testBackends(8), 7, "do not fit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			table, err := MaglevTable(tc.backends, tc.m)
			if err == nil {
				t.Fatalf("MaglevTable succeeded with %d slots, want error containing %q", len(table), tc.want)
			}
			if table != nil {
				t.Errorf("MaglevTable returned a table along with error %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func BenchmarkMaglevTable(b *testing.B) {
	for _, n := range []int{100, 1000} {
		bs := testBackends(n)
		b.Run(fmt.Sprintf("M=%d/N=%d", DefaultMaglevTableSize, n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := MaglevTable(bs, DefaultMaglevTableSize); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
