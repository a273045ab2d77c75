// Package testenv runs a real Kubernetes control plane on loopback: etcd
// (Debian's etcd-server) and kube-apiserver (and, on request,
// kube-controller-manager) built from the pinned k8s.io/kubernetes by
// hack/k8s/build.sh. Tests and the lab use it; nothing is mocked.
package testenv

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kpath/kpath/internal/nsutil"
)

// Options configure a control plane.
type Options struct {
	// Dir holds data, keys and logs; it must exist and is left in place.
	Dir string
	// BinDir has kube-apiserver and friends (see BinDir()).
	BinDir string
	// ServiceCIDR is the service cluster IP range (default 10.96.0.0/16).
	ServiceCIDR string
	// ClusterCIDR, when set, starts kube-controller-manager allocating node
	// pod CIDRs from it.
	ClusterCIDR string
	// Log receives progress lines; nil for none.
	Log func(format string, args ...any)
	// APIPort fixes kube-apiserver's port (0: any free one).
	APIPort int
	// Netns runs the control plane inside this named network namespace
	// (the lab's vnet); "" runs it in the current one.
	Netns string
	// BindAddress is where kube-apiserver listens and what it advertises
	// (default 127.0.0.1).
	BindAddress string
	// Nodes get credentials of their own (system:node:NAME in the group
	// system:nodes), which the Node authorizer and the NodeRestriction
	// admission plugin limit to what a kubelet of that node may do.
	Nodes []string
	// Scheduler starts the real kube-scheduler, so pods need no nodeName.
	Scheduler bool
	// Kubelets: the nodes run real kubelets, which heartbeat, so node
	// lifecycle runs as in a cluster (a node Ready loses the not-ready
	// taint it registers with; one that stops heartbeating is tainted and
	// its pods evicted). Without, nothing heartbeats and it stays off.
	Kubelets bool
}

// Env is a running control plane.
type Env struct {
	// Kubeconfig is the path of an admin kubeconfig for the API server.
	Kubeconfig string
	// ServingCert is the API server's self-signed serving certificate and
	// its CA (PEM), what pods' in-cluster clients verify it with.
	ServingCert string
	Config      *rest.Config
	Client      kubernetes.Interface
	// APIServerURL is https://127.0.0.1:PORT.
	APIServerURL string

	opts    Options
	etcdBin string
	mu      sync.Mutex
	procs   []*proc
	etcd    *proc
	api     *proc
	ports   struct{ etcd, peer, api int }
	token   string
	// nodeTokens are the nodes' credentials, by node name.
	nodeTokens map[string]string
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// Start starts etcd and kube-apiserver (and kube-controller-manager with a
// ClusterCIDR) and waits until the API server is ready.
func Start(ctx context.Context, opts Options) (*Env, error) {
	if opts.ServiceCIDR == "" {
		opts.ServiceCIDR = "10.96.0.0/16"
	}
	if opts.Log == nil {
		opts.Log = func(string, ...any) {}
	}
	if opts.BindAddress == "" {
		opts.BindAddress = "127.0.0.1"
	}
	need := []string{"kube-apiserver"}
	if opts.Scheduler {
		need = append(need, "kube-scheduler")
	}
	for _, b := range need {
		if _, err := os.Stat(filepath.Join(opts.BinDir, b)); err != nil {
			return nil, fmt.Errorf("%s not found in %s: build it with `make k8s-bins`", b, opts.BinDir)
		}
	}
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, fmt.Errorf("etcd not found: install Debian's etcd-server package")
	}
	e := &Env{opts: opts, etcdBin: etcdBin}
	ok := false
	defer func() {
		if !ok {
			e.Stop()
		}
	}()
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	e.ports.etcd, e.ports.peer, e.ports.api = ports[0], ports[1], ports[2]
	if opts.APIPort != 0 {
		e.ports.api = opts.APIPort
	}

	if err := e.startEtcd(ctx); err != nil {
		return nil, err
	}

	if err := e.startAPIServer(ctx); err != nil {
		return nil, err
	}
	if opts.ClusterCIDR != "" {
		if err := e.startControllerManager(); err != nil {
			return nil, err
		}
	}
	if opts.Scheduler {
		if err := e.startScheduler(); err != nil {
			return nil, err
		}
	}
	ok = true
	return e, nil
}

func (e *Env) startEtcd(ctx context.Context) error {
	e.opts.Log("starting etcd on 127.0.0.1:%d", e.ports.etcd)
	peer := fmt.Sprintf("http://127.0.0.1:%d", e.ports.peer)
	client := fmt.Sprintf("http://127.0.0.1:%d", e.ports.etcd)
	p, err := e.start("etcd", e.etcdBin,
		"--name=kpath", "--data-dir="+filepath.Join(e.opts.Dir, "etcd"),
		"--listen-client-urls="+client, "--advertise-client-urls="+client,
		"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer,
		"--initial-cluster=kpath="+peer, "--unsafe-no-fsync", "--quota-backend-bytes=8589934592",
		"--log-level=warn")
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.etcd = p
	e.mu.Unlock()
	if err := e.waitHTTP(ctx, client+"/health", nil, 30*time.Second, p); err != nil {
		return fmt.Errorf("etcd did not become healthy: %w (log: %s)", err, p.log)
	}
	return nil
}

// StopEtcd stops etcd only (the API server's store: to test an outage
// behind a running API server); RestartEtcd starts it again on the same
// address and data.
func (e *Env) StopEtcd() {
	e.mu.Lock()
	p := e.etcd
	e.mu.Unlock()
	stopProc(p)
}

// RestartEtcd starts etcd again after StopEtcd.
func (e *Env) RestartEtcd(ctx context.Context) error { return e.startEtcd(ctx) }

func (e *Env) startAPIServer(ctx context.Context) error {
	dir := e.opts.Dir
	tokens := filepath.Join(dir, "tokens.csv")
	saKey, saPub := filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	if e.token == "" { // a restart keeps the credentials clients hold
		e.token = newToken()
		lines := e.token + `,admin,admin,"system:masters"` + "\n"
		e.nodeTokens = map[string]string{}
		for _, n := range e.opts.Nodes {
			e.nodeTokens[n] = newToken()
			lines += fmt.Sprintf("%s,system:node:%s,node:%s,\"system:nodes\"\n", e.nodeTokens[n], n, n)
		}
		if err := os.WriteFile(tokens, []byte(lines), 0o600); err != nil {
			return err
		}
		if err := writeRSAKey(saKey, saPub); err != nil {
			return err
		}
	}
	e.APIServerURL = fmt.Sprintf("https://%s:%d", e.opts.BindAddress, e.ports.api)
	e.opts.Log("starting kube-apiserver on %s", e.APIServerURL)
	var err error
	// The kubernetes Service gets the API server as its endpoint (the
	// lease reconciler, as in a cluster) where pods can reach it; a
	// loopback address is no endpoint anyone else could use.
	reconciler := "lease"
	if a, err := netip.ParseAddr(e.opts.BindAddress); err != nil || a.IsLoopback() {
		reconciler = "none"
	}
	// With nodes, as in any cluster: a node may touch only its own Node,
	// the pods bound to it and what those pods use. (Without, the Node
	// authorizer's graph of every pod would only cost the benchmarks.)
	authz, admission := "RBAC", "NamespaceLifecycle"
	if len(e.opts.Nodes) > 0 {
		authz, admission = "Node,RBAC", "NodeRestriction"
	}
	e.api, err = e.start("kube-apiserver", filepath.Join(e.opts.BinDir, "kube-apiserver"),
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", e.ports.etcd),
		"--bind-address="+e.opts.BindAddress, fmt.Sprintf("--secure-port=%d", e.ports.api),
		"--advertise-address="+e.opts.BindAddress, "--endpoint-reconciler-type="+reconciler,
		"--cert-dir="+filepath.Join(dir, "certs"),
		"--token-auth-file="+tokens, "--authorization-mode="+authz, "--enable-admission-plugins="+admission,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+saPub, "--service-account-signing-key-file="+saKey,
		"--service-cluster-ip-range="+e.opts.ServiceCIDR,
		"--allow-privileged=true", "--profiling=false",
		// Kubelets by address (logs, exec): node names resolve nowhere.
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--v=0")
	if err != nil {
		return err
	}
	if err := e.waitHTTP(ctx, e.APIServerURL+"/readyz", map[string]string{"Authorization": "Bearer " + e.token}, 90*time.Second, e.api); err != nil {
		return fmt.Errorf("kube-apiserver did not become ready: %w (log: %s)", err, e.api.log)
	}
	e.Config = &rest.Config{
		Host:            e.APIServerURL,
		BearerToken:     e.token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		QPS:             1000,
		Burst:           2000,
		Dial:            e.Dial,
	}
	e.Client, err = kubernetes.NewForConfig(e.Config)
	if err != nil {
		return err
	}
	e.Kubeconfig = filepath.Join(dir, "kubeconfig")
	e.ServingCert = filepath.Join(dir, "certs", "apiserver.crt")
	return writeKubeconfig(e.Kubeconfig, e.APIServerURL, e.token)
}

func (e *Env) startControllerManager() error {
	bin := filepath.Join(e.opts.BinDir, "kube-controller-manager")
	e.opts.Log("starting kube-controller-manager (cluster CIDR %s)", e.opts.ClusterCIDR)
	// Without kubelets nothing heartbeats: node lifecycle and taint
	// eviction would mark every node NotReady and evict its pods.
	controllers := "*,-node-lifecycle-controller,-taint-eviction-controller"
	if e.opts.Kubelets {
		controllers = "*"
	}
	_, err := e.start("kube-controller-manager", bin,
		"--kubeconfig="+e.Kubeconfig, "--authentication-kubeconfig="+e.Kubeconfig,
		"--authorization-kubeconfig="+e.Kubeconfig,
		"--bind-address=127.0.0.1", "--secure-port=0",
		"--allocate-node-cidrs=true", "--cluster-cidr="+e.opts.ClusterCIDR, "--node-cidr-mask-size=24",
		"--service-cluster-ip-range="+e.opts.ServiceCIDR,
		"--service-account-private-key-file="+filepath.Join(e.opts.Dir, "sa.key"),
		// Published to every namespace as kube-root-ca.crt, which the
		// kubelet mounts into pods with their service account token.
		"--root-ca-file="+e.ServingCert,
		"--use-service-account-credentials=false",
		"--controllers="+controllers,
		"--leader-elect=false", "--v=0")
	return err
}

func (e *Env) startScheduler() error {
	e.opts.Log("starting kube-scheduler")
	_, err := e.start("kube-scheduler", filepath.Join(e.opts.BinDir, "kube-scheduler"),
		"--kubeconfig="+e.Kubeconfig, "--authentication-kubeconfig="+e.Kubeconfig,
		"--authorization-kubeconfig="+e.Kubeconfig,
		"--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false", "--v=0")
	return err
}

func newToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// NodeConfig is a client configuration with node's credentials (Options.
// Nodes), as its kubelet would hold them.
func (e *Env) NodeConfig(node string) (*rest.Config, error) {
	tok, ok := e.nodeTokens[node]
	if !ok {
		return nil, fmt.Errorf("node %s has no credentials: name it in testenv.Options.Nodes", node)
	}
	cfg := rest.CopyConfig(e.Config)
	cfg.BearerToken = tok
	return cfg, nil
}

// WriteNodeKubeconfig writes a kubeconfig with node's credentials to path.
func (e *Env) WriteNodeKubeconfig(node, path string) error {
	tok, ok := e.nodeTokens[node]
	if !ok {
		return fmt.Errorf("node %s has no credentials: name it in testenv.Options.Nodes", node)
	}
	return writeKubeconfig(path, e.APIServerURL, tok)
}

// StopAPIServer stops kube-apiserver only (to test clients riding out an
// outage); StartAPIServer brings it back on the same address.
func (e *Env) StopAPIServer() {
	e.mu.Lock()
	p := e.api
	e.mu.Unlock()
	stopProc(p)
}

// RestartAPIServer starts kube-apiserver again after StopAPIServer.
func (e *Env) RestartAPIServer(ctx context.Context) error {
	return e.startAPIServer(ctx)
}

// Stop stops every process; the data directory stays.
func (e *Env) Stop() {
	e.mu.Lock()
	procs := e.procs
	e.procs = nil
	e.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		stopProc(procs[i])
	}
}

func (e *Env) start(name, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(e.opts.Dir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	if e.opts.Netns != "" {
		cmd = exec.Command("nsenter", append([]string{"--net=/run/netns/" + e.opts.Netns, bin}, args...)...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, and killed with the parent if that dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	return p, nil
}

func stopProc(p *proc) {
	if p == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Dial connects to the control plane, from inside its namespace if it has
// one (sockets keep the namespace they were created in).
func (e *Env) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return nsutil.Dialer(e.opts.Netns)(ctx, network, addr)
}

func (e *Env) waitHTTP(ctx context.Context, url string, headers map[string]string, timeout time.Duration, p *proc) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DialContext: e.Dial}}
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %s", p.name, tail(p.log, 15))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("%s: %s", url, resp.Status)
		} else {
			last = err
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("timed out after %s: %v", timeout, last)
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		lines = append(lines, s.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

func freePorts(n int) ([]int, error) {
	var (
		out []int
		lns []net.Listener
	)
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		lns = append(lns, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

func writeRSAKey(keyPath, pubPath string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
}

func writeKubeconfig(path, server, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kpath"] = &clientcmdapi.Cluster{Server: server, InsecureSkipTLSVerify: true}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["kpath"] = &clientcmdapi.Context{Cluster: "kpath", AuthInfo: "admin"}
	cfg.CurrentContext = "kpath"
	return clientcmd.WriteToFile(*cfg, path)
}

// BinDir finds the Kubernetes binaries: $KPATH_K8S_BIN, else the cache
// directory hack/k8s/build.sh uses for the version pinned in the module
// found by walking up from the working directory.
func BinDir() (string, error) {
	return pinnedBinDir("KPATH_K8S_BIN", "k8s", "k8s.io/kubernetes", PinnedKubernetes)
}

// The versions hack/k8s, hack/cilium, hack/helm and hack/coredns pin (a
// test keeps these equal to their go.mod files): an installed kpath, run outside a checkout, finds
// the binaries make k8s-bins and make cilium-bins cached for them.
const (
	PinnedKubernetes = "v1.34.4"
	PinnedCilium     = "v1.20.2"
	PinnedHelm       = "v4.3.2"
	PinnedCoreDNS    = "v1.14.7"
)

// CoreDNSBinDir finds CoreDNS (hack/coredns/build.sh, make coredns-bins)
// as BinDir does: $KPATH_COREDNS_BIN, else its cache directory.
func CoreDNSBinDir() (string, error) {
	return pinnedBinDir("KPATH_COREDNS_BIN", "coredns", "github.com/coredns/coredns", PinnedCoreDNS)
}

// HelmBinDir finds the helm CLI (hack/helm/build.sh, make helm-bins) as
// BinDir does: $KPATH_HELM_BIN, else its cache directory.
func HelmBinDir() (string, error) {
	return pinnedBinDir("KPATH_HELM_BIN", "helm", "helm.sh/helm/v4", PinnedHelm)
}

// CiliumBinDir finds the Cilium binaries (hubble, hubble-relay) as BinDir
// does: $KPATH_CILIUM_BIN, else hack/cilium/build.sh's cache directory.
func CiliumBinDir() (string, error) {
	return pinnedBinDir("KPATH_CILIUM_BIN", "cilium", "github.com/cilium/cilium", PinnedCilium)
}

// pinnedBinDir: $env, else the cache directory hack/<sub>/build.sh builds
// module's pinned version into (hack/<sub>/go.mod above the working directory).
func pinnedBinDir(env, sub, module, pinned string) (string, error) {
	if d := os.Getenv(env); d != "" {
		return d, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "hack", sub, "go.mod"))
		if err == nil {
			for line := range strings.SplitSeq(string(data), "\n") {
				f := strings.Fields(line)
				if len(f) > 0 && f[0] == "require" { // require MODULE VERSION on one line
					f = f[1:]
				}
				if len(f) >= 2 && f[0] == module {
					return filepath.Join(cache, "kpath", sub, f[1]), nil
				}
			}
			return "", fmt.Errorf("hack/%s/go.mod does not require %s", sub, module)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			// Outside a checkout: where make cached this kpath's version.
			d := filepath.Join(cache, "kpath", sub, pinned)
			if _, err := os.Stat(d); err != nil {
				return "", fmt.Errorf("no %s %s binaries in %s: run make %s-bins in a kpath checkout (as the user who runs kpath), or set %s", module, pinned, d, sub, env)
			}
			return d, nil
		}
		dir = parent
	}
}
