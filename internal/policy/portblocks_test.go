package policy

import "testing"

func TestPortBlocks(t *testing.T) {
	for _, c := range []struct{ lo, hi uint16 }{{80, 80}, {0, 65535}, {1, 65535}, {79, 1080}, {32768, 60999}, {65534, 65535}} {
		blocks := portBlocks(c.lo, c.hi)
		covered := map[uint32]bool{}
		for _, b := range blocks {
			size := uint32(1) << (16 - b.bits)
			if uint32(b.port)%size != 0 {
				t.Errorf("%d-%d: block %d/%d not aligned", c.lo, c.hi, b.port, b.bits)
			}
			for p := uint32(b.port); p < uint32(b.port)+size; p++ {
				if covered[p] {
					t.Errorf("%d-%d: port %d covered twice", c.lo, c.hi, p)
				}
				covered[p] = true
			}
		}
		if len(covered) != int(c.hi)-int(c.lo)+1 || !covered[uint32(c.lo)] || !covered[uint32(c.hi)] {
			t.Errorf("%d-%d: covered %d ports in %d blocks", c.lo, c.hi, len(covered), len(blocks))
		}
		if len(blocks) > 30 {
			t.Errorf("%d-%d: %d blocks", c.lo, c.hi, len(blocks))
		}
	}
}
