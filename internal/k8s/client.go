package k8s

import (
	"fmt"

	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	discoveryv1client "k8s.io/client-go/kubernetes/typed/discovery/v1"
	networkingv1client "k8s.io/client-go/kubernetes/typed/networking/v1"
	"k8s.io/client-go/rest"
)

// Client is the part of the Kubernetes API the agent uses: core (Nodes,
// Services, Pods, Namespaces, Events), EndpointSlices and
// NetworkPolicies. A kubernetes.Clientset (or its fake) is one.
type Client interface {
	CoreV1() corev1client.CoreV1Interface
	DiscoveryV1() discoveryv1client.DiscoveryV1Interface
	NetworkingV1() networkingv1client.NetworkingV1Interface
}

// groupClients is a Client made of the three groups' typed clients only.
// The agent does not link client-go's whole clientset (every API group's
// client, apply configurations and the discovery client's OpenAPI
// models): a DaemonSet on every node maps its binary's pages, and these
// were megabytes of them.
type groupClients struct {
	core       *corev1client.CoreV1Client
	discovery  *discoveryv1client.DiscoveryV1Client
	networking *networkingv1client.NetworkingV1Client
}

// NewClient makes a Client for cfg.
func NewClient(cfg *rest.Config) (Client, error) {
	// Each NewForConfig makes its own HTTP client; one is shared, as a
	// clientset shares it, so the groups use one connection pool.
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	var c groupClients
	if c.core, err = corev1client.NewForConfigAndClient(cfg, hc); err != nil {
		return nil, fmt.Errorf("kubernetes client (core/v1): %w", err)
	}
	if c.discovery, err = discoveryv1client.NewForConfigAndClient(cfg, hc); err != nil {
		return nil, fmt.Errorf("kubernetes client (discovery.k8s.io/v1): %w", err)
	}
	if c.networking, err = networkingv1client.NewForConfigAndClient(cfg, hc); err != nil {
		return nil, fmt.Errorf("kubernetes client (networking.k8s.io/v1): %w", err)
	}
	return &c, nil
}

// CoreV1 is the core group's client.
func (c *groupClients) CoreV1() corev1client.CoreV1Interface { return c.core }

// DiscoveryV1 is the discovery.k8s.io group's client (EndpointSlices).
func (c *groupClients) DiscoveryV1() discoveryv1client.DiscoveryV1Interface { return c.discovery }

// NetworkingV1 is the networking.k8s.io group's client.
func (c *groupClients) NetworkingV1() networkingv1client.NetworkingV1Interface { return c.networking }
