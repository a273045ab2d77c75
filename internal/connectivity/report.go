package connectivity

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kpath/kpath/internal/lab"
)

// Reference is the service dataplane every other is compared with.
const Reference = "kube-proxy-iptables"

// LabOptions say how to run the matrix in a lab of its own.
type LabOptions struct {
	BinDir, K8sBin string // kpath's binaries, the Kubernetes ones
	// Runtime runs the labs' pods (lab.RuntimeLab or lab.RuntimeContainerd,
	// which needs ImageDir); Install is how kpath's own modes get onto real
	// nodes (lab.InstallHelm needs HelmBin), while kube-proxy modes always
	// run as the lab starts them.
	Runtime, ImageDir, Install, HelmBin string
	Log                                 func(format string, args ...any)
}

// RunInLab starts a two-node lab (named name) with services handled by
// mode, runs every cell, and removes the lab again.
func RunInLab(ctx context.Context, name, mode string, o LabOptions) (map[string]Result, error) {
	dir, err := os.MkdirTemp("", "kpath-conn-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	log := o.Log
	if log == nil {
		log = func(string, ...any) {}
	}
	install := lab.InstallLab
	if o.Install != "" && strings.HasPrefix(mode, "kpath") {
		install = o.Install
	}
	log("%s: lab up (runtime %s, install %s)", mode, cmp.Or(o.Runtime, lab.RuntimeLab), install)
	ready := 2 * time.Minute
	if o.Runtime == lab.RuntimeContainerd {
		ready = 5 * time.Minute // images imported, the chart rolled out
	}
	l, err := lab.Start(ctx, lab.Options{Name: name, Dir: filepath.Join(dir, "lab"), Nodes: 2, Routing: "native", Services: mode,
		BinDir: o.BinDir, K8sBin: o.K8sBin, Runtime: o.Runtime, ImageDir: o.ImageDir, Install: install, HelmBin: o.HelmBin,
		Log: func(string, ...any) {}}, ready)
	if err != nil {
		return nil, err
	}
	defer l.Stop()
	e, err := Setup(ctx, l.State, l.Client)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", mode, err)
	}
	e.LabDir = filepath.Join(dir, "lab")
	kpath := filepath.Join(o.BinDir, "kpath")
	start := time.Now()
	if err := e.Ready(ctx, kpath, time.Minute); err != nil {
		return nil, fmt.Errorf("%s: %w", mode, err)
	}
	log("%s: every Service served after %s", mode, time.Since(start).Round(time.Millisecond))
	cells := Cells(e.nodes)
	start = time.Now()
	res := e.Run(ctx, cells, RunOptions{Kpath: kpath})
	log("%s: %d cells in %s", mode, len(cells), time.Since(start).Round(time.Millisecond))
	return res, l.Stop()
}

// Diff is a cell where a dataplane differs from the reference.
type Diff struct {
	Cell   Cell
	Mode   string
	Worse  string // why it serves less ("" when it serves more)
	Better bool
}

// Differences compares each mode's results with the reference's.
func Differences(cells []Cell, ref map[string]Result, modes []string, got map[string]map[string]Result) []Diff {
	var out []Diff
	for _, c := range cells {
		for _, m := range modes {
			worse, better := Compare(m, c, got[m][c.Key()], ref[c.Key()])
			if worse != "" || better {
				out = append(out, Diff{Cell: c, Mode: m, Worse: worse, Better: better})
			}
		}
	}
	return out
}

// Print writes the matrix: every cell where a mode differs from the
// reference (every cell with all), each mode's result next to the
// reference's, then a line per mode.
func Print(w io.Writer, cells []Cell, ref map[string]Result, modes []string, got map[string]map[string]Result, all bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "CLIENT\tSOCKET\tTARGET\t%s\t%s\n", strings.ToUpper(Reference), strings.ToUpper(strings.Join(modes, "\t")))
	for _, c := range cells {
		line := fmt.Sprintf("%s\t%s\t%s\t%s", c.Client.Name, c.Socket.Name, c.Target.Name, ref[c.Key()].Summary())
		differs := false
		for _, m := range modes {
			r := got[m][c.Key()]
			worse, better := Compare(m, c, r, ref[c.Key()])
			mark := ""
			switch {
			case worse != "":
				mark, differs = " [WORSE]", true
			case better:
				mark, differs = " [better]", true
			}
			line += "\t" + r.Summary() + mark
		}
		if all || differs {
			fmt.Fprintln(tw, line)
		}
	}
	tw.Flush()
	for _, m := range modes {
		worse, better := 0, 0
		for _, d := range Differences(cells, ref, []string{m}, got) {
			if d.Worse != "" {
				worse++
			} else {
				better++
			}
		}
		fmt.Fprintf(w, "%s: %d cells, %d served as %s does, %d better, %d worse\n", m, len(cells), len(cells)-worse-better, Reference, better, worse)
	}
}
