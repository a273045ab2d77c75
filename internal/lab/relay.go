package lab

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/kpath/kpath/internal/hubble"
	"github.com/kpath/kpath/internal/nsutil"
)

// Where the lab's Hubble servers and relay listen: every agent on its node
// address at Hubble's port, the relay on the vnet's bridge address at
// relay's, so relay reaches every node as it does in a cluster.
const (
	hubblePort = "4244"
	relayAddr  = vnetAddr + ":4245"
)

// startRelay runs the real hubble-relay in the vnet namespace. It finds
// the nodes through the Peer service of node-1's agent (in a cluster: the
// hubble-peer Service) and dials each node's Hubble server over TCP. The
// lab's Hubble servers speak plaintext, so relay does too. Its API is also
// served on the host at sock (hubble --server unix://SOCK), relayed into
// the vnet, where nothing outside the lab can reach it.
func startRelay(ctx context.Context, o Options, st *State, sock string, procs *children) error {
	logf, err := os.Create(filepath.Join(o.Dir, "hubble-relay.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command("nsenter", "--net=/run/netns/"+st.Vnet, o.HubbleRelay, "serve",
		"--peer-service=unix://"+st.Nodes[0].HubbleSocket,
		"--listen-address="+relayAddr, "--health-listen-address="+vnetAddr+":4222",
		"--disable-client-tls", "--disable-server-tls", "--gops=false",
		// A restarted agent is found again within seconds, not relay's 30.
		"--retry-timeout=2s")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if _, err := procs.start(cmd, func() { logf.Close() }); err != nil {
		return fmt.Errorf("start hubble-relay: %w", err)
	}
	ln, err := hubble.ListenUnix(sock) // root only, as the agents' are
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); ln.Close() }()
	dial := nsutil.Dialer(st.Vnet)
	go nsutil.Relay(ln, func(ctx context.Context) (net.Conn, error) { return dial(ctx, "tcp", relayAddr) })
	return nil
}
