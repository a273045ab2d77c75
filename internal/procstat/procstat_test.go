package procstat

import (
	"os"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	// A comm with spaces and a parenthesis, as the kernel writes it.
	line := "4242 (kube proxy) x) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 12 0 500 1000000 300 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
	st, err := parse(line)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != 'S' || st.PPID != 17 || st.CPU != 3*time.Second || st.ChildrenCPU != 100*time.Millisecond ||
		st.RSSBytes != 300*uint64(os.Getpagesize()) {
		t.Errorf("parsed %+v", st)
	}
	if _, err := parse("4242 (x"); err == nil {
		t.Error("a truncated line parsed")
	}
}

func TestReadSelf(t *testing.T) {
	st, err := Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.PPID != os.Getppid() || st.RSSBytes == 0 {
		t.Errorf("own stat %+v", st)
	}
	if _, err := Read(-1); err == nil {
		t.Error("pid -1 read")
	}
}

func TestAnonRSSOfSelf(t *testing.T) {
	anon, err := AnonRSS(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	st, err := Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if anon == 0 || anon > st.RSSBytes {
		t.Errorf("anonymous RSS %d, RSS %d", anon, st.RSSBytes)
	}
}
