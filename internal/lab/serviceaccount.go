package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// KubernetesService is where pods find the API server, as the kubelet
// tells them (KUBERNETES_SERVICE_HOST and _PORT): the kubernetes Service,
// the first address of the lab's service CIDR.
const (
	kubernetesServiceHost = "10.96.0.1"
	kubernetesServicePort = "443"
)

// PodServiceAccountDir is where the lab's runtime keeps a pod's service
// account files (token, ca.crt, namespace), which `kpath workload sandbox`
// mounts where in-cluster clients read them.
func PodServiceAccountDir(labDir, node string, uid types.UID) string {
	return filepath.Join(labDir, node, "pods", string(uid), "serviceaccount")
}

// PodEnv is what the kubelet puts in every container's environment for
// in-cluster clients.
func PodEnv() []string {
	return []string{"KUBERNETES_SERVICE_HOST=" + kubernetesServiceHost, "KUBERNETES_SERVICE_PORT=" + kubernetesServicePort}
}

// writeServiceAccount writes p's service account token (bound to the
// pod, as the kubelet requests it), the API server's CA and the pod's
// namespace into dir. The service account may not exist yet right after
// its namespace: the controller-manager creates it, so this waits a little.
func (r *Runtime) writeServiceAccount(ctx context.Context, p *corev1.Pod, dir string) error {
	sa := p.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	ca, err := os.ReadFile(r.ServiceAccountCA)
	if err != nil {
		return fmt.Errorf("API server CA: %w", err)
	}
	expiry := int64(24 * 3600)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: &expiry,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
	}}
	var tok *authenticationv1.TokenRequest
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		tok, err = r.Client.CoreV1().ServiceAccounts(p.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("token for service account %s/%s: %w", p.Namespace, sa, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for name, data := range map[string][]byte{"token": []byte(tok.Status.Token), "ca.crt": ca, "namespace": []byte(p.Namespace)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}
