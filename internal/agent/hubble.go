package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/kpath/kpath/internal/hubble"
	"github.com/kpath/kpath/internal/model"
)

// serveHubble serves Hubble's Observer and Peer services on the unix
// socket and the TCP address the configuration names, until ctx ends.
func (a *Agent) serveHubble(ctx context.Context) error {
	var lns []net.Listener
	if a.cfg.HubbleSocket != "" {
		ln, err := hubble.ListenUnix(a.cfg.HubbleSocket)
		if err != nil {
			return err
		}
		lns = append(lns, ln)
	}
	port := ""
	var tlsName func(node, cluster string) string // nil: plaintext
	if addr := a.cfg.HubbleListenAddress; addr != "" {
		var tlsCfg *tls.Config
		if t := a.cfg.HubbleTLS; t != nil && !a.cfg.HubbleDisableTLS {
			var err error
			if tlsCfg, err = hubble.ServerTLS(t.CertFile, t.KeyFile, t.ClientCAFiles); err != nil {
				for _, l := range lns {
					l.Close()
				}
				return err
			}
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return fmt.Errorf("hubble listen address %s: %w", addr, err)
		}
		if tlsCfg != nil {
			ln = tls.NewListener(ln, tlsCfg)
			tlsName = hubble.TLSServerName
		}
		lns = append(lns, ln)
		_, port, _ = net.SplitHostPort(addr)
	}
	if len(lns) == 0 {
		return nil
	}
	peers := hubble.NewPeers()
	hs := &hubble.Server{Ring: a.flows.ring, Node: a.cfg.NodeName, Started: a.started, Peers: peers}
	go a.announcePeers(ctx, peers, port, tlsName)
	go func() {
		if err := hs.Serve(ctx, lns...); err != nil && ctx.Err() == nil {
			a.log.Error("hubble API stopped", "socket", a.cfg.HubbleSocket, "listen", a.cfg.HubbleListenAddress, "error", err)
		}
	}()
	return nil
}

// announcePeers keeps the Peer service's nodes those of the cluster, each
// at its first address (InternalIP before ExternalIP, as Cilium picks it)
// and this agent's Hubble port, with the TLS server name its certificate
// holds when this agent speaks TLS: every agent is configured alike, as a
// DaemonSet's are.
func (a *Agent) announcePeers(ctx context.Context, peers *hubble.Peers, port string, tlsName func(node, cluster string) string) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var last uint64
	first := true
	for {
		if nodes, gen := a.cache.Nodes(); first || gen != last {
			list := peerList(nodes, port)
			if tlsName != nil {
				for i := range list {
					list[i].TLSServerName = tlsName(list[i].Name, a.cfg.ClusterName)
				}
			}
			peers.Set(list)
			first, last = false, gen
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// peerList: the nodes with an address; without a port, the bare address
// (Hubble clients then use 4244).
func peerList(nodes []*model.Node, port string) []hubble.Peer {
	out := make([]hubble.Peer, 0, len(nodes))
	for _, n := range nodes {
		if len(n.Addrs) == 0 {
			continue
		}
		addr := n.Addrs[0].String()
		if port != "" {
			addr = net.JoinHostPort(addr, port)
		}
		out = append(out, hubble.Peer{Name: n.Name, Address: addr})
	}
	return out
}
