package lab

import "testing"

func TestNamesKeepLabsApart(t *testing.T) {
	unnamed, err := namesFor("")
	if err != nil {
		t.Fatal(err)
	}
	named, err := namesFor("e1-kpath")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		n    names
		name string
		want bool
	}{
		{unnamed, "kplab-vnet", true},
		{unnamed, "kplab-node-1", true},
		{unnamed, "kplab-node-12-0123abcd", true},
		{unnamed, "kplab-e1-kpath-vnet", false},
		{unnamed, "kplab-e1-kpath-node-1", false},
		{unnamed, "kplab-e1-kpath-node-1-0123abcd", false},
		{unnamed, "kplab-node-1-x", false},
		{named, "kplab-e1-kpath-vnet", true},
		{named, "kplab-e1-kpath-node-1-0123abcd", true},
		{named, "kplab-vnet", false},
		{named, "kplab-e1-kpath-tc-node-1", false},
		{unnamed, "kpath-lab-node-1", false}, // a pin directory is not a namespace
	} {
		if got := owns(c.n.netns, c.name); got != c.want {
			t.Errorf("owns(%q, %q) = %v, want %v", c.n.netns, c.name, got, c.want)
		}
	}
	if !owns(named.pin, "kpath-lab-e1-kpath-node-1") || owns(unnamed.pin, "kpath-lab-e1-kpath-node-1") {
		t.Error("pin directories not told apart")
	}
	for _, bad := range []string{"Kpath", "-x", "x-", "a/b", "abcdefghijklmnopqrstu"} {
		if _, err := namesFor(bad); err == nil {
			t.Errorf("lab name %q accepted", bad)
		}
	}
}
