package test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kpath/kpath/internal/image"
	"github.com/kpath/kpath/internal/testenv"
	"github.com/kpath/kpath/internal/testutil"
)

// createRendered creates the objects of objs (those of the kinds given;
// none given: all) with opts, and returns the API server's refusals.
func createRendered(t *testing.T, env *testenv.Env, objs []*unstructured.Unstructured, opts metav1.CreateOptions, kinds ...string) []error {
	t.Helper()
	dc, err := discovery.NewDiscoveryClientForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	dyn, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	var errs []error
	for _, u := range objs {
		if len(kinds) > 0 && !slices.Contains(kinds, u.GetKind()) {
			continue
		}
		gvk := u.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s: %v", gvk, err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if u.GetNamespace() != "" {
			ri = dyn.Resource(m.Resource).Namespace(u.GetNamespace())
		}
		if _, err := ri.Create(context.Background(), u, opts); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", u.GetKind(), u.GetName(), err))
		}
	}
	return errs
}

// TestChartRBAC: the agent run with only the chart's ServiceAccount (its
// ClusterRole: list and watch of what it follows, create and patch of
// Events) syncs and serves, records the Event it is there for (kube-proxy's
// rules found on its node), and no call of its is forbidden: the chart
// grants it nothing it does not use, and all it uses.
func TestChartRBAC(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "ip", "nsenter", "nft")
	manifest, err := helmChart(t, "render")
	if err != nil {
		t.Fatal(err)
	}
	env := testenv.StartForTest(t, testenv.Options{})
	setupCluster(t, env.Client)
	for _, err := range createRendered(t, env, decodeManifests(t, manifest), metav1.CreateOptions{}, "ServiceAccount", "ClusterRole", "ClusterRoleBinding") {
		t.Fatalf("create: %v", err)
	}
	ctx := context.Background()
	tok, err := env.Client.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "kpath-agent", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kpath"] = &clientcmdapi.Cluster{Server: env.APIServerURL, InsecureSkipTLSVerify: true}
	cfg.AuthInfos["kpath-agent"] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
	cfg.Contexts["kpath"] = &clientcmdapi.Context{Cluster: "kpath", AuthInfo: "kpath-agent"}
	cfg.CurrentContext = "kpath"
	if err := clientcmd.WriteToFile(*cfg, kubeconfig); err != nil {
		t.Fatal(err)
	}
	node := testutil.NewNetns(t, "kpt-"+testutil.UniqueID()+"-rbac")
	testutil.ForwardIntoNetns(t, node, strings.TrimPrefix(env.APIServerURL, "https://"))
	testutil.Run(t, "ip", "netns", "exec", node, "nft", "add", "table", "ip", "kube-proxy")
	// startAgentProcess waits until the agent serves CNI, which it does
	// once every watch has synced: a list it may not make never does.
	socket, _ := startAgentProcess(t, env, buildBinaries(t), node, "--pod-cidr=10.244.5.0/24", "--kubeconfig="+kubeconfig)
	waitFor(t, 30*time.Second, "the agent's KubeProxyRulesFound Event", func() bool {
		evs, err := env.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "reason=KubeProxyRulesFound"})
		return err == nil && len(evs.Items) > 0
	})
	logs, err := os.ReadFile(filepath.Join(filepath.Dir(socket), "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.ToLower(string(logs)), "forbidden") {
		t.Errorf("the agent made calls its ServiceAccount may not make:\n%s", logs)
	}
}

// helmChart runs hack/helm (Helm's Go packages) on the chart.
func helmChart(t *testing.T, verb string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("go", append([]string{"run", ".", verb, "../../deploy/helm/kpath"}, args...)...)
	cmd.Dir = "../hack/helm"
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), errors.New(strings.TrimSpace(errOut.String()))
	}
	return out.String(), nil
}

func decodeManifests(t *testing.T, manifest string) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	d := yaml.NewYAMLOrJSONDecoder(strings.NewReader(manifest), 4096)
	for {
		var u unstructured.Unstructured
		if err := d.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return out
			}
			t.Fatalf("rendered manifest: %v", err)
		}
		if len(u.Object) > 0 {
			out = append(out, &u)
		}
	}
}

// TestChart: the chart lints clean and renders with Helm's Go packages;
// deploy/kpath.yaml is its default rendering; every rendered object, with
// the default values and with Hubble's mTLS listener and the API server's
// address set, is accepted by a real API server (server-side dry run, no
// unknown field); the
// DaemonSet runs this tree's image tag; a listener without TLS is refused
// unless asked for by name.
func TestChart(t *testing.T) {
	testutil.RequireTool(t, "go")
	if _, err := helmChart(t, "lint"); err != nil {
		t.Fatalf("lint: %v", err)
	}
	def, err := helmChart(t, "render")
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	committed, err := os.ReadFile("../deploy/kpath.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if string(committed) != def {
		t.Error("deploy/kpath.yaml is not the chart's default rendering: run make generate")
	}
	tls, err := helmChart(t, "render", "--set", "hubble.listenAddress=:4244", "--set", "hubble.tlsSecret=hubble-server-certs",
		"--set", "k8sServiceHost=10.0.0.1", "--set", "k8sServicePort=6443", "--set", "agent.clusterCIDR=10.244.0.0/16",
		"--set", "hubble.relay.enabled=true", "--set", "hubble.relay.clientTLSSecret=relay-client-certs")
	if err != nil {
		t.Fatalf("render with Hubble mTLS: %v", err)
	}
	if !strings.Contains(tls, "hubbleTLS:") || !strings.Contains(tls, "KUBERNETES_SERVICE_HOST") ||
		!strings.Contains(tls, "--peer-service=hubble-peer.kube-system.svc.cluster.local:443") || !strings.Contains(tls, "targetPort: 4244") {
		t.Errorf("Hubble mTLS, relay or the API server's address not rendered:\n%s", tls)
	}
	if _, err := helmChart(t, "render", "--set", "hubble.listenAddress=:4244", "--set", "hubble.tlsSecret=x", "--set", "hubble.relay.enabled=true"); err == nil || !strings.Contains(err.Error(), "clientTLSSecret") {
		t.Errorf("relay without its client certificate rendered: %v", err)
	}
	if _, err := helmChart(t, "render", "--set", "hubble.listenAddress=:4244"); err == nil || !strings.Contains(err.Error(), "tlsSecret") {
		t.Errorf("a Hubble listener without TLS rendered: %v", err)
	}
	if out, err := helmChart(t, "render", "--set", "hubble.listenAddress=:4244", "--set", "hubble.disableTLS=true"); err != nil || !strings.Contains(out, "hubbleDisableTLS: true") {
		t.Errorf("a plaintext listener asked for by name: %v", err)
	}
	// Cleanup mode: the cleanup DaemonSet and its configuration only,
	// under names the release being removed does not hold.
	cleanup, err := helmChart(t, "render", "--set", "cleanup.enabled=true")
	if err != nil {
		t.Fatalf("render cleanup: %v", err)
	}
	var kinds []string
	for _, u := range decodeManifests(t, cleanup) {
		kinds = append(kinds, u.GetKind()+"/"+u.GetName())
	}
	if strings.Join(kinds, " ") != "ConfigMap/kpath-cleanup DaemonSet/kpath-cleanup" {
		t.Errorf("cleanup mode renders %v", kinds)
	}

	for _, u := range decodeManifests(t, def) {
		if u.GetKind() != "DaemonSet" {
			continue
		}
		var ds appsv1.DaemonSet
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &ds); err != nil {
			t.Fatal(err)
		}
		for _, c := range append(ds.Spec.Template.Spec.InitContainers, ds.Spec.Template.Spec.Containers...) {
			if c.Image != "kpath/kpath:"+image.Tag {
				t.Errorf("container %s runs %s, want kpath/kpath:%s", c.Name, c.Image, image.Tag)
			}
			// Privileged only where a mount must reach the node.
			privileged := c.SecurityContext != nil && c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged
			if mounts := c.Name == "mount-bpf-fs" || c.Name == "mount-cgroup"; privileged != mounts {
				t.Errorf("container %s: privileged %v", c.Name, privileged)
			}
			if c.Name == "agent" {
				caps := c.SecurityContext.Capabilities
				if caps == nil || len(caps.Drop) != 1 || caps.Drop[0] != "ALL" || len(caps.Add) != 3 {
					t.Errorf("agent capabilities %+v: want ALL dropped and BPF, PERFMON, NET_ADMIN added", caps)
				}
			}
		}
		if !ds.Spec.Template.Spec.HostNetwork || ds.Spec.Template.Spec.PriorityClassName != "system-node-critical" {
			t.Errorf("DaemonSet %+v: want hostNetwork and system-node-critical", ds.Spec.Template.Spec)
		}
	}

	testutil.RequireRoot(t)
	env := testenv.StartForTest(t, testenv.Options{})
	for name, manifest := range map[string]string{"default": def, "hubble mTLS": tls, "cleanup": cleanup} {
		objs := decodeManifests(t, manifest)
		if len(objs) < 5 && name != "cleanup" {
			t.Fatalf("%s: %d objects rendered", name, len(objs))
		}
		for _, err := range createRendered(t, env, objs, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"}) {
			t.Errorf("%s: the API server refuses %v", name, err)
		}
	}
}
