package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/flows"
	"github.com/kpath/kpath/internal/hubble"
	"github.com/kpath/kpath/internal/k8s"
	"github.com/kpath/kpath/internal/masq"
	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/policy"
	"github.com/kpath/kpath/internal/policysync"
	"github.com/kpath/kpath/internal/reconcile"
	"github.com/kpath/kpath/internal/routing"
)

// Agent is a running kpath-agent.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	dp    *datapath.Datapath
	cache *k8s.Cache
	rec   *reconcile.Reconciler
	reg   *prometheus.Registry
	// store and psync enforce NetworkPolicy (nil with networkPolicy off).
	store   *policy.Store
	psync   *policysync.Syncer
	events  atomic.Pointer[podEvents] // set once the API client exists
	ctFlush *ctFlusher
	flows   *flowSource // nil with flows off
	cni     *endpoints
	ready   atomic.Bool
	started time.Time
	readyAt atomic.Int64 // unix nanos
}

// Run runs the agent until ctx ends. Configuration errors are returned
// before anything is attached. If the API server cannot be reached, the
// datapath keeps serving what its pinned maps hold and the agent stays
// not-ready until it syncs.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	a, err := New(cfg, log)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// New validates cfg, opens the datapath (restoring its pinned state) and
// attaches the socket hook. It does not contact the API server.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration: %w", err)
	}
	a := &Agent{cfg: cfg, log: log, started: time.Now(), cache: k8s.NewCache(), reg: prometheus.NewRegistry()}
	dcfg := cfg.Datapath()
	if cfg.KubeProxyReplacement {
		// Without it the node's own connections to a load-balancer IP
		// with loadBalancerSourceRanges go untranslated to the network.
		var err error
		if dcfg.NodeNetnsCookie, err = datapath.NetnsCookie(); err != nil {
			log.Warn("the node's network namespace has no cookie (SO_NETNS_COOKIE, Linux 5.14): "+
				"the node's own sockets reach load-balancer IPs with loadBalancerSourceRanges only through the network", "error", err)
		}
	}
	if cfg.KubeProxyReplacement && !cfg.SocketHook {
		// Pods are translated per packet, but the node's own sockets
		// (kubelet, hostNetwork pods) have no veth to be translated on:
		// the socket hook serves them, and only them.
		cookie, err := datapath.NetnsCookie()
		if err != nil {
			return nil, fmt.Errorf("socketHook false: host-network clients need the socket hook limited to the node's namespace: %w", err)
		}
		dcfg.HostNetnsCookie = cookie
	}
	dp, err := datapath.Open(dcfg)
	if err != nil {
		return nil, err
	}
	a.dp = dp
	if cfg.KubeProxyReplacement {
		root := cfg.CgroupRoot
		if root == "auto" {
			if root, err = datapath.CgroupV2Root(); err != nil {
				dp.Close()
				return nil, err
			}
		}
		if err := dp.AttachCgroup(root); err != nil {
			dp.Close()
			return nil, err
		}
		log.Info("socket hook attached", "cgroup", root, "hostNetworkOnly", !cfg.SocketHook)
	}
	for _, dev := range cfg.Devices {
		if !cfg.KubeProxyReplacement {
			break // NodePorts are kube-proxy's
		}
		if err := dp.AttachDevice(dev); err != nil {
			dp.Close()
			return nil, fmt.Errorf("device %s: %w", dev, err)
		}
	}
	if len(cfg.Devices) > 0 {
		log.Info("uplink programs attached", "devices", cfg.Devices)
	}
	sel, _ := model.ParseSelection(cfg.Selection)
	// The GC's CPU too: with the handlers' own (kpath_k8s_event_handler_cpu_seconds_total)
	// it tells where steady-state CPU goes.
	gc := collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/cpu/classes/gc/total:cpu-seconds$`)}
	a.reg.MustRegister(collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(gc)),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.reg.MustRegister(newDatapathCollector(dp))
	if cfg.NetworkPolicy {
		a.store = policy.NewStore()
		ms := cfg.MapSizes
		a.psync, err = policysync.New(a.store, dp, policysync.Options{
			Node: cfg.NodeName, Log: log, Metrics: policysync.NewMetrics(a.reg),
			OnError:     func(pod model.PodKey, err error) { a.events.Load().policyNotApplied(pod, err) },
			AddressGone: func(ip netip.Addr) { a.ctFlush.add(ip) },
			Capacity:    policysync.Capacity{Entries: int(ms.PolicyEntries), CIDRs: int(ms.PolicyCIDRs), Endpoints: int(ms.Endpoints), IPCache: int(ms.IPCache)},
		})
		if err != nil {
			dp.Close()
			return nil, fmt.Errorf("read pinned policy state: %w", err)
		}
	}
	a.cni = &endpoints{a: a, leakedReleased: prometheus.NewCounter(prometheus.CounterOpts{Name: "kpath_ipam_leaked_released_total",
		Help: "Addresses released because their pod's interface was gone and no CNI DEL came."})}
	a.reg.MustRegister(a.cni.leakedReleased)
	a.ctFlush = newCTFlusher(dp.ConntrackFlush, log, a.reg)
	if cfg.Flows {
		a.flows = &flowSource{a: a, ring: flows.NewRing(cfg.FlowRingSize), m: newFlowMetrics(a.reg)}
	}
	a.rec = reconcile.New(a.cache, dp, reconcile.Options{
		NodeName: cfg.NodeName, ProxyName: cfg.ProxyName, Selection: sel, Off: !cfg.KubeProxyReplacement,
		Metrics: reconcile.NewMetrics(a.reg), Log: log,
	})
	return a, nil
}

// Datapath returns the agent's datapath (tests read its maps).
func (a *Agent) Datapath() *datapath.Datapath { return a.dp }

// Ready reports whether the agent has synced with the API server once.
func (a *Agent) Ready() bool { return a.ready.Load() }

// Run watches the API server and serves until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	defer a.dp.Close()
	endStartup := startupGC(os.Getenv)
	defer endStartup()
	restCfg, err := restConfig(a.cfg.Kubeconfig)
	if err != nil {
		return err
	}
	client, err := k8s.NewClient(restCfg)
	if err != nil {
		return err
	}
	ev, stopEvents := newPodEvents(client, a.cfg.NodeName)
	defer stopEvents()
	a.events.Store(ev)
	if a.cfg.KubeProxyReplacement {
		go a.kubeProxyRules(ctx, ev)
	}
	wo := k8s.WatchOptions{ProxyName: a.cfg.ProxyName, NodesOnly: !a.cfg.KubeProxyReplacement, Metrics: k8s.NewEventMetrics(a.reg)}
	if a.cfg.KubeProxyReplacement {
		wo.HostPortNode = a.cfg.NodeName
	}
	if a.store != nil {
		wo.Policy = a.store
	}
	w, err := k8s.NewWatcher(client, a.cache, wo)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if a.cfg.MetricsAddr != "" {
		srv, err := a.serveHTTP(a.cfg.MetricsAddr)
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	api, err := a.serveAPI(a.cfg.APISocket)
	if err != nil {
		return err
	}
	defer api.Close()

	if a.flows != nil {
		go a.runFlows(ctx)
		if o := a.cfg.FlowExport; o != nil {
			ex, err := hubble.NewExporter(*o, a.cfg.NodeName)
			if err != nil {
				return err
			}
			defer ex.Close()
			go func() {
				missed := ex.Run(ctx, a.flows.ring, func(err error) { a.log.Warn("flow export", "error", err) })
				if missed > 0 {
					a.log.Warn("flow export could not keep up", "missed", missed)
				}
			}()
		}
		if err := a.serveHubble(ctx); err != nil {
			return err
		}
	}
	w.Start(ctx)
	// The datapath keeps serving its restored state while we wait.
	for {
		err := w.WaitForSync(ctx, 30*time.Second)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		a.log.Error("waiting for the API server; the datapath keeps serving its last state", "error", err)
	}
	if err := a.rec.Sync(true); err != nil {
		a.log.Error("initial sync incomplete; retrying", "error", err)
	}
	a.cni.restorePods()
	if a.psync != nil {
		// Until now the pinned policy kept enforcing; the pods this node
		// has are known before the first sync, so theirs is adopted.
		go a.nodeAddresses(ctx)
		a.waitNodeAddresses(ctx)
		a.restoreEndpoints(a.cni)
		if err := a.psync.Sync(true); err != nil {
			a.log.Error("initial policy sync incomplete; retrying", "error", err)
		}
		go a.policyLoop(ctx)
	}
	endStartup()
	a.ready.Store(true)
	a.readyAt.Store(time.Now().UnixNano())
	a.log.Info("ready", "startup", time.Since(a.started).Round(time.Millisecond), "status", a.rec.Status())
	if dir := a.cfg.CNIConfDir; dir != "" {
		if err := WriteCNIConf(dir, a.cfg.APISocket); err != nil {
			return fmt.Errorf("ready, but the node cannot turn Ready: %w", err)
		}
		a.log.Info("CNI network configuration written", "file", filepath.Join(dir, CNIConfName))
	}

	go a.rec.Run(ctx, a.cfg.ResyncPeriod.Duration)
	go a.conntrackGC(ctx)
	go a.ctFlush.run(ctx, ctFlushDelay)
	go a.cni.leakSweeps(ctx, leakSweepInterval)
	go a.nodeNetwork(ctx)
	hc := &healthChecks{bind: a.cfg.HealthCheckBind, node: a.cfg.NodeName, log: a.log, servers: map[uint16]*hcServer{}}
	defer hc.closeAll()
	go func() {
		if !a.cfg.KubeProxyReplacement {
			return // kube-proxy serves health check node ports
		}
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			hc.sync(a.cache)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	<-ctx.Done()
	return nil
}

func (a *Agent) conntrackGC(ctx context.Context) {
	t := time.NewTicker(a.cfg.CTGCInterval.Duration)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			var (
				deleted, remaining int
				err                error
			)
			if a.flows != nil {
				var ends []datapath.CTEnd
				deleted, remaining, ends, err = a.dp.ConntrackGCEnded()
				a.flows.ended(ends, time.Now())
			} else {
				deleted, remaining, err = a.dp.ConntrackGC()
			}
			if err != nil {
				a.log.Error("conntrack garbage collection", "error", err)
				continue
			}
			if deleted > 0 {
				a.log.Debug("conntrack garbage collection", "deleted", deleted, "remaining", remaining)
			}
		}
	}
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no kubeconfig given and not running in a cluster: %w", err)
		}
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
	}
	cfg.QPS, cfg.Burst = 50, 100
	cfg.UserAgent = "kpath-agent"
	// Protobuf, as the kubelet and kube-proxy speak it: at 100k pods the
	// watch streams are several times smaller and cheaper to decode than
	// JSON. Every type the agent watches is a built-in one.
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	return cfg, nil
}

func (a *Agent) serveHTTP(addr string) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "not synced with the API server yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics address %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("metrics server", "error", err)
		}
	}()
	return srv, nil
}

// nodeAddr is this node's address as its Node says (InternalIP first);
// invalid while unknown.
func (a *Agent) nodeAddr() netip.Addr {
	if n := a.cache.Node(a.cfg.NodeName); n != nil && len(n.Addrs) > 0 {
		return n.Addrs[0]
	}
	return netip.Addr{}
}

// nodeNetwork keeps routes to other nodes' pod CIDRs, the masquerade rules
// and the datapath's node address in step with the Node objects.
func (a *Agent) nodeNetwork(ctx context.Context) {
	mode, _ := routing.ParseMode(a.cfg.Routing)
	dev := ""
	if len(a.cfg.Devices) > 0 {
		dev = a.cfg.Devices[0]
	}
	r := routing.New(routing.Config{Mode: mode, LocalNode: a.cfg.NodeName, Device: dev})
	var (
		lastGen   uint64
		lastRules string
		synced    bool
	)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	full := time.Now()
	for {
		nodes, gen := a.cache.Nodes()
		if !synced || gen != lastGen || time.Since(full) > time.Minute {
			if err := a.dp.SetNodeAddr(a.nodeAddr()); err != nil {
				a.log.Error("node address for the datapath", "error", err)
			}
			local := a.localPodCIDR()
			if err := r.Sync(local, nodes); err != nil {
				a.log.Error("routes to other nodes", "mode", mode, "error", err)
			} else {
				synced, lastGen, full = true, gen, time.Now()
			}
			devices := a.cfg.Devices
			if mode == routing.VXLAN && len(devices) > 0 {
				// Outside traffic sent on to another node's backend leaves
				// through the tunnel, and must be masqueraded there too.
				devices = append(slices.Clone(devices), routing.VXLANDevice)
			}
			rules := masq.Rules{Devices: devices, Mark: a.cfg.Datapath().MasqueradeMark, PodCIDR: local}
			if a.cfg.ClusterCIDR != "" {
				rules.ClusterCIDR = netip.MustParsePrefix(a.cfg.ClusterCIDR)
			}
			// Without devices there is nothing to masquerade on; an agent
			// that never had any leaves the host's nftables alone.
			if s := masq.Ruleset(rules); s != lastRules && (len(a.cfg.Devices) > 0 || lastRules != "") {
				if err := masq.Ensure(rules); err != nil {
					a.log.Error("masquerade rules", "error", err)
				} else {
					lastRules = s
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// localPodCIDR is this node's pod CIDR: configured, or from its Node.
func (a *Agent) localPodCIDR() netip.Prefix {
	if p, err := netip.ParsePrefix(a.cfg.PodCIDR); err == nil {
		return p
	}
	if n := a.cache.Node(a.cfg.NodeName); n != nil {
		return n.PodCIDR
	}
	return netip.Prefix{}
}
