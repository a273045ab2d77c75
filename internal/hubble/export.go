package hubble

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kpath/kpath/internal/flows"
)

// ExportOptions are Hubble's export-file options: where, how large a file
// grows before it is rotated, how many rotated files are kept, and which
// flows (an allow list and a deny list of filters, in kpath observe's
// terms; empty allow: all).
type ExportOptions struct {
	Path       string         `json:"path"`
	MaxSizeMB  int            `json:"maxSizeMB,omitempty"`
	MaxBackups int            `json:"maxBackups,omitempty"`
	Allow      []flows.Filter `json:"allow,omitempty"`
	Deny       []flows.Filter `json:"deny,omitempty"`
}

// Validate reports what is wrong with o.
func (o ExportOptions) Validate() error {
	if !filepath.IsAbs(o.Path) {
		return fmt.Errorf("flow export path %q: want an absolute path", o.Path)
	}
	if o.MaxSizeMB < 1 || o.MaxBackups < 0 {
		return fmt.Errorf("flow export: maxSizeMB must be at least 1 and maxBackups not negative")
	}
	for _, f := range append(append([]flows.Filter{}, o.Allow...), o.Deny...) {
		if err := f.Validate(); err != nil {
			return fmt.Errorf("flow export filter: %w", err)
		}
	}
	return nil
}

// Exporter writes flows as Hubble does: one GetFlowsResponse in JSON per
// line, so tools that read Hubble's exports read kpath's.
type Exporter struct {
	o    ExportOptions
	node string

	mu   sync.Mutex
	f    *os.File
	size int64
}

// NewExporter opens (appends to) the export file.
func NewExporter(o ExportOptions, node string) (*Exporter, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	e := &Exporter{o: o, node: node}
	if err := e.open(); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *Exporter) open() error {
	if err := os.MkdirAll(filepath.Dir(e.o.Path), 0o750); err != nil {
		return fmt.Errorf("flow export directory: %w", err)
	}
	f, err := os.OpenFile(e.o.Path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("open flow export file: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	e.f, e.size = f, st.Size()
	return nil
}

// keep applies the allow and deny lists.
func (e *Exporter) keep(fl *flows.Flow) bool {
	allowed := len(e.o.Allow) == 0
	for i := range e.o.Allow {
		allowed = allowed || e.o.Allow[i].Match(fl)
	}
	for i := range e.o.Deny {
		if e.o.Deny[i].Match(fl) {
			return false
		}
	}
	return allowed
}

// Write appends fl if the lists keep it, rotating the file first when it
// would grow past its size.
func (e *Exporter) Write(fl *flows.Flow) error {
	if !e.keep(fl) {
		return nil
	}
	b, err := protojson.Marshal(&observerpb.GetFlowsResponse{
		ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: Flow(fl)}, NodeName: e.node, Time: timestamppb.New(fl.Time),
	})
	if err != nil {
		return err
	}
	b = append(b, '\n')
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.size > 0 && e.size+int64(len(b)) > int64(e.o.MaxSizeMB)<<20 {
		if err := e.rotate(); err != nil {
			return err
		}
	}
	n, err := e.f.Write(b)
	e.size += int64(n)
	return err
}

// rotate renames path.N-1 to path.N ... path to path.1, dropping the
// oldest beyond MaxBackups, and starts a new file.
func (e *Exporter) rotate() error {
	e.f.Close()
	for i := e.o.MaxBackups; i >= 1; i-- {
		from := e.o.Path
		if i > 1 {
			from = fmt.Sprintf("%s.%d", e.o.Path, i-1)
		}
		if err := os.Rename(from, fmt.Sprintf("%s.%d", e.o.Path, i)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("rotate flow export: %w", err)
		}
	}
	if e.o.MaxBackups == 0 {
		if err := os.Remove(e.o.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return e.open()
}

// Close closes the file.
func (e *Exporter) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.f.Close()
}

// Run writes every new flow of ring until ctx ends; it returns how many it
// could not keep up with.
func (e *Exporter) Run(ctx context.Context, ring *flows.Ring, onErr func(error)) uint64 {
	return ring.Follow(ctx, nil, func(f flows.Flow) bool {
		if err := e.Write(&f); err != nil {
			onErr(err)
		}
		return true
	})
}
