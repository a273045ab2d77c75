package conformance

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kpath/kpath/internal/image"
	"github.com/kpath/kpath/internal/lab"
	"github.com/kpath/kpath/internal/testenv"
)

// Options say what to run and where the results go.
type Options struct {
	// Services serves the lab's Services: kpath, kpath-tc or a kube-proxy
	// mode (lab.ServiceModes); Install is how kpath gets onto the nodes
	// (lab.InstallLab or lab.InstallHelm).
	Services, Install string
	// Focus and Skip select the tests (default: Focus and SkipPattern()).
	Focus []string
	Skip  string
	// Nodes is the lab's size; Procs how many ginkgo processes run tests
	// at once.
	Nodes, Procs int
	// Out receives junit.xml, summary.json and the suite's log.
	Out string
	// BinDir holds kpath's binaries, ImageDir the project's images (make
	// image's bin/images), Pause the static kpath-pause they were made of
	// (default: BinDir/static/kpath-pause, as make image leaves it),
	// K8sBin the pinned Kubernetes binaries (e2e.test, ginkgo, agnhost),
	// CoreDNSBin the pinned CoreDNS, HelmBin helm for InstallHelm, Busybox
	// a static busybox.
	BinDir, ImageDir, Pause, K8sBin, CoreDNSBin, HelmBin, Busybox string
	// Timeout bounds the suite's run.
	Timeout time.Duration
	Log     func(format string, args ...any)
}

// Run builds the suite's images, brings up a lab of real nodes with the
// cluster DNS, runs the selected tests in it and returns their summary
// (also in Out). An error means the run did not happen, not that tests
// failed.
func Run(ctx context.Context, o Options) (*Summary, error) {
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	if len(o.Focus) == 0 {
		o.Focus = Focus
	}
	if o.Skip == "" {
		extra := MachineSkips()
		for _, s := range extra {
			o.Log("skipping %s: %s", s.Pattern, s.Why)
		}
		o.Skip = SkipPattern(extra...)
	}
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Procs == 0 {
		o.Procs = 4
	}
	if o.Timeout == 0 {
		o.Timeout = 3 * time.Hour
	}
	if o.Pause == "" {
		o.Pause = filepath.Join(o.BinDir, "static", "kpath-pause")
	}
	for _, b := range []string{"e2e.test", "ginkgo", "agnhost", "kubectl"} {
		if _, err := os.Stat(filepath.Join(o.K8sBin, b)); err != nil {
			return nil, fmt.Errorf("conformance needs %s of the pinned Kubernetes: make k8s-bins e2e-bins", b)
		}
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "kpath-conformance-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)

	start := time.Now()
	images := filepath.Join(work, "images")
	if err := buildImages(o, images); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	o.Log("the suite's images built in %s", time.Since(start).Round(time.Second))

	start = time.Now()
	l, err := lab.Start(ctx, lab.Options{Name: "conformance", Dir: filepath.Join(work, "lab"), Nodes: o.Nodes, Routing: "native",
		Services: o.Services, BinDir: o.BinDir, K8sBin: o.K8sBin, Runtime: lab.RuntimeContainerd,
		ImageDir: o.ImageDir, ImageDirs: []string{images}, Install: o.Install, HelmBin: o.HelmBin,
		ClusterDNS: image.CoreDNSRef(testenv.PinnedCoreDNS), Log: o.Log}, 8*time.Minute)
	if err != nil {
		return nil, err
	}
	defer l.Stop()
	o.Log("lab of %d real nodes up (services %s) in %s", o.Nodes, o.Services, time.Since(start).Round(time.Second))

	s := &Summary{Services: o.Services, Kubernetes: testenv.PinnedKubernetes, Nodes: o.Nodes, Started: time.Now().UTC().Format(time.RFC3339),
		Focus: o.Focus, Skip: o.Skip}
	if o.Install == lab.InstallHelm {
		s.Services += " (helm)"
	}
	start = time.Now()
	_ = os.Remove(filepath.Join(o.Out, "junit.xml")) // an earlier run's, which must not pass for this one's
	runErr := runSuite(ctx, o, l.State)
	s.Seconds = time.Since(start).Seconds()
	if err := ReadJUnit(filepath.Join(o.Out, "junit.xml"), s); err != nil {
		if runErr != nil {
			return nil, fmt.Errorf("%w (and the suite: %v; see %s)", err, runErr, filepath.Join(o.Out, "e2e.log"))
		}
		return nil, err
	}
	if err := s.Write(filepath.Join(o.Out, "summary.json")); err != nil {
		return nil, err
	}
	return s, l.Stop()
}

// buildImages writes the e2e suite's images into dir.
func buildImages(o Options, dir string) error {
	specs, err := image.E2E(image.E2EInputs{
		Agnhost: filepath.Join(o.K8sBin, "agnhost"), PorterDir: filepath.Join(o.K8sBin, "agnhost-porter"),
		Pause:   o.Pause,
		CoreDNS: filepath.Join(o.CoreDNSBin, "coredns"), Busybox: o.Busybox,
	}, testenv.PinnedCoreDNS)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for i, s := range specs {
		img, err := image.Build(s)
		if err != nil {
			return err
		}
		if err := image.WriteLayout(filepath.Join(dir, fmt.Sprintf("e2e-%d.tar", i)), s.Ref, img); err != nil {
			return err
		}
	}
	return nil
}

// runSuite runs the selected tests with ginkgo in the lab's vnet namespace
// (where the API server, the nodes and the pods are reachable), the suite's
// output in Out/e2e.log and its JUnit report in Out/junit.xml.
func runSuite(ctx context.Context, o Options, st *lab.State) error {
	logf, err := os.Create(filepath.Join(o.Out, "e2e.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	out, err := filepath.Abs(o.Out)
	if err != nil {
		return err
	}
	args := []string{"netns", "exec", st.Vnet, filepath.Join(o.K8sBin, "ginkgo"), "run",
		"--procs", strconv.Itoa(o.Procs), "--timeout", o.Timeout.String(), "--no-color",
		"--skip", o.Skip, "--junit-report", "junit.xml", "--output-dir", out}
	for _, f := range o.Focus {
		args = append(args, "--focus", f)
	}
	args = append(args, filepath.Join(o.K8sBin, "e2e.test"), "--",
		"--kubeconfig="+st.Kubeconfig, "--provider=skeleton", "--num-nodes="+strconv.Itoa(o.Nodes),
		"--kubectl-path="+filepath.Join(o.K8sBin, "kubectl"), "--report-dir="+out, "--disable-log-dump=true",
		"--dns-domain="+lab.ClusterDomain)
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// ginkgo runs e2e.test processes of its own: a run cut short takes
	// them all down, not ginkgo alone.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.Env = append(os.Environ(), "KUBECONFIG="+st.Kubeconfig, "PATH="+o.K8sBin+string(os.PathListSeparator)+os.Getenv("PATH"))
	o.Log("running the suite (%d processes): ginkgo %s", o.Procs, strings.Join(args[4:], " "))
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ginkgo: %w", err)
	}
	return nil
}
