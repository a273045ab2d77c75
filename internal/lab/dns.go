package lab

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// ClusterDNSIP is the kube-dns Service's address (the tenth of the service
// range, as kubeadm takes it) and ClusterDomain the cluster's domain: the
// kubelets of a lab with Options.ClusterDNS write them into every pod's
// resolv.conf.
const (
	ClusterDNSIP  = "10.96.0.10"
	ClusterDomain = "cluster.local"
)

// corefile is the cluster addon's Corefile (kubeadm's): the cluster's
// names from the API, everything else from the node's resolvers.
const corefile = `.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    loop
    reload
    loadbalance
}
`

// deployClusterDNS runs CoreDNS from image as the cluster's DNS, the way
// the kube-dns addon is deployed (kubeadm's objects: its ServiceAccount and
// ClusterRole, the coredns ConfigMap and Deployment, the kube-dns Service
// at ClusterDNSIP), and waits until it is ready.
func deployClusterDNS(ctx context.Context, c kubernetes.Interface, image string) error {
	const ns = "kube-system"
	labels := map[string]string{"k8s-app": "kube-dns"}
	create := func(what string, err error) error {
		if err != nil {
			return fmt.Errorf("cluster DNS: %s: %w", what, err)
		}
		return nil
	}
	_, err := c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "coredns"}}, metav1.CreateOptions{})
	if err := create("service account", err); err != nil {
		return err
	}
	_, err = c.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"endpoints", "services", "pods", "namespaces"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		}}, metav1.CreateOptions{})
	if err := create("cluster role", err); err != nil {
		return err
	}
	_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:coredns"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "coredns", Namespace: ns}}}, metav1.CreateOptions{})
	if err := create("cluster role binding", err); err != nil {
		return err
	}
	_, err = c.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "coredns"},
		Data: map[string]string{"Corefile": corefile}}, metav1.CreateOptions{})
	if err := create("config map", err); err != nil {
		return err
	}
	replicas := int32(2)
	probe := func(path string, port int32) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(port)}},
			PeriodSeconds: 2, FailureThreshold: 5}
	}
	_, err = c.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "coredns", Labels: labels},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
				ServiceAccountName: "coredns", PriorityClassName: "system-cluster-critical", DNSPolicy: corev1.DNSDefault,
				Containers: []corev1.Container{{Name: "coredns", Image: image, ImagePullPolicy: corev1.PullNever,
					Args: []string{"-conf", "/etc/coredns/Corefile"},
					Ports: []corev1.ContainerPort{{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
						{Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP}, {Name: "metrics", ContainerPort: 9153}},
					VolumeMounts:   []corev1.VolumeMount{{Name: "config", MountPath: "/etc/coredns", ReadOnly: true}},
					LivenessProbe:  probe("/health", 8080),
					ReadinessProbe: probe("/ready", 8181),
					SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: new(bool), ReadOnlyRootFilesystem: new(true),
						Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_BIND_SERVICE"}}},
				}},
				Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
					LocalObjectReference: corev1.LocalObjectReference{Name: "coredns"}}}}},
				// Spread over the nodes, as the addon asks.
				TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{MaxSkew: 1, TopologyKey: "kubernetes.io/hostname",
					WhenUnsatisfiable: corev1.ScheduleAnyway, LabelSelector: &metav1.LabelSelector{MatchLabels: labels}}},
			}}}}, metav1.CreateOptions{})
	if err := create("deployment", err); err != nil {
		return err
	}
	_, err = c.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Labels: labels},
		Spec: corev1.ServiceSpec{Selector: labels, ClusterIP: ClusterDNSIP, Ports: []corev1.ServicePort{
			{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(53)},
			{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(53)},
			{Name: "metrics", Port: 9153, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(9153)},
		}}}, metav1.CreateOptions{})
	if err := create("service", err); err != nil {
		return err
	}
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(time.Second) {
		d, err := c.AppsV1().Deployments(ns).Get(ctx, "coredns", metav1.GetOptions{})
		if err == nil && d.Status.ReadyReplicas == replicas {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster DNS: coredns not ready after 3 minutes (kpath lab kubectl -n kube-system describe pods -l k8s-app=kube-dns)")
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}
