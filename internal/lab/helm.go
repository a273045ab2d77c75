package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/kpath/kpath/deploy/helm"
	"github.com/kpath/kpath/internal/image"
)

// Installed kpath (--install helm): the real nodes come up with no
// kube-proxy and no CNI, and kpath is installed as a user installs it:
// helm install of the chart (the one built into this binary) with the
// pinned helm CLI, the agent running as a DaemonSet from the image the
// nodes imported, reaching the API server at its own address
// (k8sServiceHost), installing kpath-cni and writing the network
// configuration once ready, which is when each node turns Ready.

// Ways to put kpath on the nodes.
const (
	InstallLab  = ""     // the lab runs kpath-agent on each node itself
	InstallHelm = "helm" // helm install of the chart: kpath as a DaemonSet
)

// Release and namespace the lab installs the chart as.
const (
	HelmRelease   = "kpath"
	HelmNamespace = "kube-system"
	// hubbleSecret holds the agents' Hubble server certificate, and
	// relaySecret relay's client certificate.
	hubbleSecret = "kpath-hubble-server"
	relaySecret  = "kpath-hubble-relay-client"
	// hubblePeerIP is the hubble-peer Service's address: the lab has no
	// DNS, so relay is given it.
	hubblePeerIP = "10.96.4.244"
)

// helmValues are the chart values that fit the lab: its API server, its
// routing, the nodes' uplink and Hubble's mTLS listener.
func helmValues(o Options, apiServer string) (map[string]any, error) {
	u, err := url.Parse(apiServer)
	if err != nil {
		return nil, fmt.Errorf("API server address %q: %w", apiServer, err)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		return nil, fmt.Errorf("API server address %q: %w", apiServer, err)
	}
	agent := map[string]any{
		"routing":     o.Routing,
		"clusterCIDR": ClusterCIDR,
		"devices":     []string{"eth0"},
		"socketHook":  o.Services != "kpath-tc",
	}
	if len(o.AgentArgs) > 0 {
		agent["extraArgs"] = o.AgentArgs
	}
	hubble := map[string]any{"listenAddress": ":" + hubblePort, "tlsSecret": hubbleSecret,
		"peerService": map[string]any{"clusterIP": hubblePeerIP}}
	if o.HubbleRelay != "" {
		// A restarted agent is found again within seconds, not relay's 30.
		hubble["relay"] = map[string]any{"enabled": true, "clientTLSSecret": relaySecret, "peerTarget": hubblePeerIP + ":443", "retryTimeout": "2s"}
	}
	return map[string]any{
		"image":          map[string]any{"tag": image.Tag},
		"k8sServiceHost": host,
		"k8sServicePort": port,
		"agent":          agent,
		"hubble":         hubble,
	}, nil
}

// HelmCmd runs the helm CLI against the lab's API server, from the vnet
// (where the API server listens), in the release's namespace, with helm's
// own files in the lab (kpath lab helm).
func HelmCmd(st *State, args ...string) (*exec.Cmd, error) {
	if st.HelmBin == "" {
		return nil, errors.New("the lab has no helm (it was not brought up with --install helm)")
	}
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + st.Vnet, "--", st.HelmBin,
		"--kubeconfig", st.Kubeconfig, "--namespace", HelmNamespace}, args...)...)
	home := filepath.Join(st.Dir, "helm")
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(home, "cache"), "HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"))
	return cmd, nil
}

// Helm runs helm against the lab (HelmCmd) and returns its output.
func Helm(st *State, args ...string) (string, error) {
	cmd, err := HelmCmd(st, args...)
	if err != nil {
		return "", err
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// ImportImage imports an image tarball (an OCI layout, as make image
// writes) into every real node's containerd, as a user loads an image
// onto a cluster that pulls from no registry.
func ImportImage(st *State, tarball string) error {
	nm, err := namesFor(st.Name)
	if err != nil {
		return err
	}
	if st.Runtime != RuntimeContainerd {
		return errors.New("images are imported into real nodes only (--runtime containerd)")
	}
	for _, n := range st.Nodes {
		if out, err := newRealNode(st.Dir, nm, n).ctr("images", "import", tarball); err != nil {
			return fmt.Errorf("import %s on %s: %w: %s", tarball, n.Name, err, out)
		}
	}
	return nil
}

// installChart installs kpath's chart on the lab's real nodes and waits
// until every agent is ready and every node Ready.
func installChart(ctx context.Context, o Options, st *State, c kubernetes.Interface, nodes []realNode) error {
	for _, r := range nodes {
		// What the node's OS image brings: containerd calls loopback for
		// every pod (Debian's containernetworking-plugins has it).
		if err := copyFile(filepath.Join(o.BinDir, "loopback"), filepath.Join(r.root("/opt/cni/bin"), "loopback"), 0o755); err != nil {
			return fmt.Errorf("loopback plugin on %s: %w", r.n.Name, err)
		}
	}
	if err := tlsSecret(ctx, c, hubbleSecret, st.HubbleTLS, "agents"); err != nil {
		return err
	}
	if o.HubbleRelay != "" {
		if _, err := os.Stat(filepath.Join(o.ImageDir, "hubble-relay.tar")); err != nil {
			return fmt.Errorf("hubble-relay's image is not in %s: make cilium-bins, then make image", o.ImageDir)
		}
		if err := tlsSecret(ctx, c, relaySecret, st.HubbleTLS, "relay"); err != nil {
			return err
		}
	}
	vals, err := helmValues(o, st.APIServer)
	if err != nil {
		return err
	}
	dir := filepath.Join(o.Dir, "helm")
	chart, err := helm.WriteChart(dir)
	if err != nil {
		return err
	}
	data, err := yaml.Marshal(vals)
	if err != nil {
		return err
	}
	valuesFile := filepath.Join(dir, "values.yaml")
	if err := os.WriteFile(valuesFile, data, 0o600); err != nil {
		return err
	}
	st.HelmBin, st.Chart = o.HelmBin, chart
	o.Log("helm install %s %s --namespace %s -f %s", HelmRelease, chart, HelmNamespace, valuesFile)
	start := time.Now()
	if _, err := Helm(st, "install", HelmRelease, chart, "--values", valuesFile, "--wait=watcher", "--timeout", "4m"); err != nil {
		return fmt.Errorf("%w\n%s", err, agentDiagnosis(ctx, c))
	}
	o.Log("kpath installed: every agent ready in %s", time.Since(start).Round(100*time.Millisecond))
	return waitNodesReady(ctx, c, len(nodes), 2*time.Minute)
}

// tlsSecret stores the certificate NAME.crt/.key of the lab's Hubble PKI
// (hubblePKI) with the CA as a TLS Secret (tls.crt, tls.key, ca.crt): the
// agents' server certificate, or relay's client certificate.
func tlsSecret(ctx context.Context, c kubernetes.Interface, secretName, tlsDir, name string) error {
	var err error
	files := map[string]string{"tls.crt": name + ".crt", "tls.key": name + ".key", "ca.crt": "hubble-ca.crt"}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: secretName, Namespace: HelmNamespace}, Type: corev1.SecretTypeTLS, Data: map[string][]byte{}}
	for key, f := range files {
		if secret.Data[key], err = os.ReadFile(filepath.Join(tlsDir, f)); err != nil {
			return err
		}
	}
	_, err = c.CoreV1().Secrets(HelmNamespace).Create(ctx, secret, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		_, err = c.CoreV1().Secrets(HelmNamespace).Update(ctx, secret, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("secret %s: %w", secretName, err)
	}
	return nil
}

// relayPodAddress is where the chart's hubble-relay serves, as the vnet
// reaches it (the pod's address; the vnet routes pod CIDRs).
func relayPodAddress(ctx context.Context, c kubernetes.Interface) (string, error) {
	pods, err := c.CoreV1().Pods(HelmNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=hubble-relay"})
	if err != nil {
		return "", err
	}
	for _, p := range pods.Items {
		if p.Status.PodIP != "" && p.DeletionTimestamp == nil {
			return net.JoinHostPort(p.Status.PodIP, "4245"), nil
		}
	}
	return "", errors.New("no hubble-relay pod has an address")
}

// waitNodesReady waits for n nodes with condition Ready.
func waitNodesReady(ctx context.Context, c kubernetes.Interface, n int, within time.Duration) error {
	deadline := time.Now().Add(within)
	var last string
	for time.Now().Before(deadline) && ctx.Err() == nil {
		nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err == nil {
			ready, notReady := 0, []string{}
			for _, node := range nodes.Items {
				ok := false
				for _, cond := range node.Status.Conditions {
					if cond.Type == corev1.NodeReady {
						ok = cond.Status == corev1.ConditionTrue
						if !ok {
							notReady = append(notReady, node.Name+": "+cond.Message)
						}
					}
				}
				if ok {
					ready++
				}
			}
			if ready >= n {
				return nil
			}
			last = strings.Join(notReady, "; ")
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("nodes not Ready within %s: %s", within, last)
}

// agentDiagnosis tells why agents are not ready: their pods' states and
// the last lines of each one's log.
func agentDiagnosis(ctx context.Context, c kubernetes.Interface) string {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	pods, err := c.CoreV1().Pods(HelmNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=kpath-agent"})
	if err != nil {
		return "agent pods: " + err.Error()
	}
	var b strings.Builder
	for _, p := range pods.Items {
		fmt.Fprintf(&b, "pod %s on %s: %s", p.Name, p.Spec.NodeName, p.Status.Phase)
		for _, cs := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			switch {
			case cs.State.Waiting != nil:
				fmt.Fprintf(&b, "; %s waiting: %s %s", cs.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message)
			case cs.State.Terminated != nil:
				fmt.Fprintf(&b, "; %s terminated: %s (exit %d)", cs.Name, cs.State.Terminated.Reason, cs.State.Terminated.ExitCode)
			}
		}
		b.WriteString("\n")
		tail := int64(15)
		for _, ctr := range []string{"mount-cgroup", "install-cni", "agent"} {
			logs, err := c.CoreV1().Pods(HelmNamespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: ctr, TailLines: &tail}).DoRaw(ctx)
			if err == nil && len(logs) > 0 {
				fmt.Fprintf(&b, "  %s log:\n%s\n", ctr, logs)
			}
		}
	}
	return b.String()
}
