package bench

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// progress draws "  what n/total (rate/s)" on one terminal line, redrawn
// at most four times a second; safe for concurrent Add.
type progress struct {
	w     io.Writer
	what  string
	total int
	start time.Time

	mu    sync.Mutex
	n     int
	drawn time.Time
}

func newProgress(w io.Writer, what string, total int) *progress {
	if w == nil {
		w = io.Discard
	}
	return &progress{w: w, what: what, total: total, start: time.Now()}
}

// Add counts n more done.
func (p *progress) Add(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n += n
	if time.Since(p.drawn) >= 250*time.Millisecond {
		p.drawLocked("\r")
	}
}

// Done draws the final count and ends the line.
func (p *progress) Done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drawLocked("\r")
	fmt.Fprintln(p.w)
}

func (p *progress) drawLocked(prefix string) {
	p.drawn = time.Now()
	const width = 30
	fill := width
	if p.total > 0 {
		fill = p.n * width / p.total
	}
	bar := make([]byte, width)
	for i := range bar {
		bar[i] = '.'
		if i < fill {
			bar[i] = '#'
		}
	}
	rate := float64(p.n) / max(time.Since(p.start).Seconds(), 1e-3)
	fmt.Fprintf(p.w, "%s  [%s] %d/%d %s (%.0f/s)", prefix, bar, p.n, p.total, p.what, rate)
}
