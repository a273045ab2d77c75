package testenv

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestControlPlaneServesAPI(t *testing.T) {
	env := StartForTest(t, Options{})
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kpath-test"}}
	if _, err := env.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "kpath-test"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
	}
	got, err := env.Client.CoreV1().Services("kpath-test").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.ClusterIP == "" {
		t.Fatal("no cluster IP allocated")
	}
	t.Logf("service got cluster IP %s", got.Spec.ClusterIP)
}

// TestPinnedVersions: the versions an installed kpath looks for are the
// ones hack/ pins; from outside a checkout it finds their cache, or says
// what to run.
func TestPinnedVersions(t *testing.T) {
	for file, want := range map[string]string{
		"../../hack/k8s/go.mod":     "k8s.io/kubernetes " + PinnedKubernetes,
		"../../hack/cilium/go.mod":  "github.com/cilium/cilium " + PinnedCilium,
		"../../hack/helm/go.mod":    "helm.sh/helm/v4 " + PinnedHelm,
		"../../hack/coredns/go.mod": "github.com/coredns/coredns " + PinnedCoreDNS,
	} {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), want) {
			t.Errorf("%s does not pin %s: update the constant", file, want)
		}
	}
	t.Setenv("KPATH_K8S_BIN", "")
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	t.Chdir(t.TempDir())
	if _, err := BinDir(); err == nil || !strings.Contains(err.Error(), "make k8s-bins") {
		t.Errorf("outside a checkout, without the cache: %v", err)
	}
	want := filepath.Join(os.Getenv("XDG_CACHE_HOME"), "kpath", "k8s", PinnedKubernetes)
	if err := os.MkdirAll(want, 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := BinDir(); err != nil || got != want {
		t.Errorf("outside a checkout, with the cache: %s, %v; want %s", got, err, want)
	}
}
