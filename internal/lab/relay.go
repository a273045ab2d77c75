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
	"github.com/kpath/kpath/internal/pki"
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
// hubble-peer Service) and dials each node's Hubble server over TCP with
// mTLS (hubblePKI), checking each server's certificate against the name
// the Peer service gives. Its own API is served in plaintext on the vnet's
// address, and on the host at sock (hubble --server unix://SOCK), relayed
// into the vnet, where nothing outside the lab can reach it.
func startRelay(ctx context.Context, o Options, st *State, sock string, procs *children) error {
	logf, err := os.Create(filepath.Join(o.Dir, "hubble-relay.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command("nsenter", "--net=/run/netns/"+st.Vnet, o.HubbleRelay, "serve",
		"--peer-service=unix://"+st.Nodes[0].HubbleSocket,
		"--listen-address="+relayAddr, "--health-listen-address="+vnetAddr+":4222",
		"--tls-hubble-server-ca-files="+filepath.Join(st.HubbleTLS, "hubble-ca.crt"),
		"--tls-hubble-client-cert-file="+filepath.Join(st.HubbleTLS, "relay.crt"),
		"--tls-hubble-client-key-file="+filepath.Join(st.HubbleTLS, "relay.key"),
		"--disable-server-tls", "--gops=false",
		// A restarted agent is found again within seconds, not relay's 30.
		"--retry-timeout=2s")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if _, err := procs.start(cmd, func() { logf.Close() }); err != nil {
		return fmt.Errorf("start hubble-relay: %w", err)
	}
	return forwardRelay(ctx, st, sock, relayAddr)
}

// forwardRelay serves relay's API (at addr, as the vnet reaches it) on the
// host at sock: hubble --server unix://SOCK.
func forwardRelay(ctx context.Context, st *State, sock, addr string) error {
	ln, err := hubble.ListenUnix(sock) // root only, as the agents' are
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); ln.Close() }()
	dial := nsutil.Dialer(st.Vnet)
	go nsutil.Relay(ln, func(ctx context.Context) (net.Conn, error) { return dial(ctx, "tcp", addr) })
	return nil
}

// hubblePKI issues the lab's Hubble certificates into dir/hubble-tls: a
// CA, a server certificate per node (its Hubble TLS server name and its
// address), and client certificates for relay and for the hubble CLI.
func hubblePKI(labDir string, nodes []string) (string, error) {
	dir := filepath.Join(labDir, "hubble-tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	ca, err := pki.NewCA(dir, "hubble-ca")
	if err != nil {
		return "", err
	}
	for i, n := range nodes {
		ip := net.ParseIP(nodeIP(i + 1))
		if _, err := ca.Issue(dir, n, true, []string{hubble.TLSServerName(n, "default")}, []net.IP{ip}); err != nil {
			return "", err
		}
	}
	// One for every agent of an installed kpath (a DaemonSet mounts one
	// Secret): *.CLUSTER.hubble-grpc.cilium.io, as Cilium's chart issues.
	if _, err := ca.Issue(dir, "agents", true, []string{hubble.TLSServerName("*", "default")}, nil); err != nil {
		return "", err
	}
	for _, client := range []string{"relay", "client"} {
		if _, err := ca.Issue(dir, client, false, nil, nil); err != nil {
			return "", err
		}
	}
	return dir, nil
}
