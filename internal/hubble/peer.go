package hubble

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"

	peerpb "github.com/cilium/cilium/api/v1/peer"
)

// Peer is one node's Hubble server as the Peer service announces it.
type Peer struct {
	// Name is the node's name (Hubble's peer name for the default cluster).
	Name string
	// Address is host:port of the node's Hubble server, or a bare IP when
	// it has no TCP listener configured (clients then assume port 4244).
	Address string
	// TLSServerName is the name the server's certificate holds when it
	// speaks TLS (TLSServerName), "" when it speaks plaintext.
	TLSServerName string
}

// TLSServerName is the name a node's Hubble server certificate holds, by
// Cilium's convention: NODE.CLUSTER.hubble-grpc.cilium.io, dots of the
// node's name made dashes. hubble-relay checks it when it dials the node.
func TLSServerName(node, cluster string) string {
	return strings.ReplaceAll(node, ".", "-") + "." + cluster + ".hubble-grpc.cilium.io"
}

// errSubscriberBehind ends a Notify stream whose client reads slower than
// the cluster changes; the client reconnects and gets the whole set again,
// which is what Cilium's Peer service makes relay do too.
var errSubscriberBehind = errors.New("peer change notifications: client too slow, reconnect")

// subscriberBuffer is how many changes a Notify stream may lag behind.
const subscriberBuffer = 1024

// Peers is Hubble's Peer service: on Notify, every node of the cluster as
// PEER_ADDED, then each change as it happens. hubble-relay follows it to
// find the Hubble servers it aggregates.
type Peers struct {
	peerpb.UnimplementedPeerServer

	mu   sync.Mutex
	cur  map[string]Peer // by name
	subs map[chan *peerpb.ChangeNotification]struct{}
}

// NewPeers returns a Peer service announcing no node yet.
func NewPeers() *Peers {
	return &Peers{cur: map[string]Peer{}, subs: map[chan *peerpb.ChangeNotification]struct{}{}}
}

// Set replaces the announced nodes, telling every stream what changed.
func (p *Peers) Set(peers []Peer) {
	next := make(map[string]Peer, len(peers))
	for _, pe := range peers {
		next[pe.Name] = pe
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var changes []*peerpb.ChangeNotification
	for _, name := range slices.Sorted(maps.Keys(p.cur)) {
		if _, ok := next[name]; !ok {
			changes = append(changes, change(p.cur[name], peerpb.ChangeNotificationType_PEER_DELETED))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(next)) {
		old, ok := p.cur[name]
		switch {
		case !ok:
			changes = append(changes, change(next[name], peerpb.ChangeNotificationType_PEER_ADDED))
		case old != next[name]:
			changes = append(changes, change(next[name], peerpb.ChangeNotificationType_PEER_UPDATED))
		}
	}
	p.cur = next
	for ch := range p.subs {
		if !offer(ch, changes) {
			// Closing tells the stream it missed a change.
			close(ch)
			delete(p.subs, ch)
		}
	}
}

// offer queues changes on ch without waiting; false when ch is full.
func offer(ch chan<- *peerpb.ChangeNotification, changes []*peerpb.ChangeNotification) bool {
	for _, c := range changes {
		select {
		case ch <- c:
		default:
			return false
		}
	}
	return true
}

// List returns the announced nodes, sorted by name.
func (p *Peers) List() []Peer {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Peer, 0, len(p.cur))
	for _, name := range slices.Sorted(maps.Keys(p.cur)) {
		out = append(out, p.cur[name])
	}
	return out
}

// Notify sends every announced node, then the changes, until the client
// goes away.
func (p *Peers) Notify(_ *peerpb.NotifyRequest, stream peerpb.Peer_NotifyServer) error {
	ch := make(chan *peerpb.ChangeNotification, subscriberBuffer)
	p.mu.Lock()
	initial := make([]*peerpb.ChangeNotification, 0, len(p.cur))
	for _, name := range slices.Sorted(maps.Keys(p.cur)) {
		initial = append(initial, change(p.cur[name], peerpb.ChangeNotificationType_PEER_ADDED))
	}
	p.subs[ch] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		if _, ok := p.subs[ch]; ok {
			delete(p.subs, ch)
			close(ch)
		}
		p.mu.Unlock()
	}()
	for _, c := range initial {
		if err := stream.Send(c); err != nil {
			return err
		}
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case c, ok := <-ch:
			if !ok {
				return errSubscriberBehind
			}
			if err := stream.Send(c); err != nil {
				return err
			}
		}
	}
}

// change is one notification; a peer speaking TLS says the name its
// certificate holds, which relay verifies.
func change(p Peer, t peerpb.ChangeNotificationType) *peerpb.ChangeNotification {
	c := &peerpb.ChangeNotification{Name: p.Name, Address: p.Address, Type: t}
	if p.TLSServerName != "" {
		c.Tls = &peerpb.TLS{ServerName: p.TLSServerName}
	}
	return c
}
