package test

import (
	"context"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	klab "github.com/kpath/kpath/internal/lab"
	"github.com/kpath/kpath/internal/testutil"
)

// kubeProxyLeftovers: kube-proxy's nftables table on a node where kpath
// replaces kube-proxy is reported by the agent restarted there: its metric
// counts it, and a Warning Event on the Node names it.
func kubeProxyLeftovers(t *testing.T, st *klab.State, c kubernetes.Interface) {
	t.Helper()
	node := st.Nodes[1]
	testutil.Run(t, "ip", "netns", "exec", node.Netns, "nft", "add", "table", "ip", "kube-proxy")
	defer func() {
		_ = exec.Command("ip", "netns", "exec", node.Netns, "nft", "delete", "table", "ip", "kube-proxy").Run()
	}()
	// The lab restarts an agent that exits, as a DaemonSet would.
	if err := syscall.Kill(findProcess(t, "kpath-agent", "--pin-dir="+node.PinDir), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the agent's kube-proxy rules metric", func() bool {
		if len(findProcesses("kpath-agent", "--pin-dir="+node.PinDir)) == 0 {
			return false
		}
		m, err := tryAgentMetrics(node)
		return err == nil && m.sum("kpath_kube_proxy_rules", `kind="nftables"`) == 1
	})
	waitFor(t, 30*time.Second, "a KubeProxyRulesFound Event on "+node.Name, func() bool {
		evs, err := c.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.kind=Node,reason=KubeProxyRulesFound"})
		if err != nil {
			return false
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.Name == node.Name && strings.Contains(e.Message, "table ip kube-proxy") {
				return true
			}
		}
		return false
	})
}
