package lb

import "testing"

func TestIDAllocatorDoesNotReuseFreshlyFreedIDs(t *testing.T) {
	a := NewIDAllocator(4)
	got := []uint32{}
	for range 3 {
		id, err := a.Allocate()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, id)
	}
	if got[0] != 1 || got[1] != 2 || got[2] != 3 {
		t.Fatalf("first IDs = %v, want [1 2 3]", got)
	}
	a.Release(2)
	if id, _ := a.Allocate(); id != 4 {
		t.Fatalf("after releasing 2, Allocate = %d, want 4 (move forward first)", id)
	}
	if id, _ := a.Allocate(); id != 2 {
		t.Fatalf("wrapped Allocate = %d, want 2", id)
	}
	if _, err := a.Allocate(); err == nil {
		t.Fatal("Allocate on a full space succeeded")
	}
}

func TestIDAllocatorReserveAfterRestart(t *testing.T) {
	a := NewIDAllocator(100)
	for _, id := range []uint32{7, 3} {
		if err := a.Reserve(id); err != nil {
			t.Fatal(err)
		}
	}
	if id, _ := a.Allocate(); id != 8 {
		t.Fatalf("Allocate after restoring 3 and 7 = %d, want 8", id)
	}
	if err := a.Reserve(0); err == nil {
		t.Fatal("Reserve(0) succeeded")
	}
	if err := a.Reserve(101); err == nil {
		t.Fatal("Reserve(101) succeeded")
	}
	if a.InUse() != 3 {
		t.Fatalf("InUse = %d, want 3", a.InUse())
	}
}
