package hubble

import (
	"context"
	"net"
	"testing"
	"time"

	peerpb "github.com/cilium/cilium/api/v1/peer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kpath/kpath/internal/flows"
)

// TestPeerNotify: a Peer client over TCP gets every node as added, then
// each change (added, address updated, deleted) and nothing for a Set
// that changes nothing; the server answers gRPC health.
func TestPeerNotify(t *testing.T) {
	peers := NewPeers()
	peers.Set([]Peer{{Name: "node-2", Address: "10.0.0.2:4244"}, {Name: "node-1", Address: "10.0.0.1:4244"}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := &Server{Ring: flows.NewRing(4), Node: "node-1", Started: time.Now(), Peers: peers}
	go func() { _ = s.Serve(ctx, ln) }()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health %v, %v", h, err)
	}
	stream, err := peerpb.NewPeerClient(conn).Notify(ctx, &peerpb.NotifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	next := func() string {
		t.Helper()
		c, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if c.GetTls() != nil {
			t.Errorf("%v: TLS announced on a plaintext server", c)
		}
		return c.GetType().String() + " " + c.GetName() + " " + c.GetAddress()
	}
	for _, want := range []string{"PEER_ADDED node-1 10.0.0.1:4244", "PEER_ADDED node-2 10.0.0.2:4244"} {
		if got := next(); got != want {
			t.Errorf("initial: %q, want %q", got, want)
		}
	}
	peers.Set([]Peer{{Name: "node-2", Address: "10.0.0.2:4244"}, {Name: "node-1", Address: "10.0.0.1:4244"}})
	peers.Set([]Peer{{Name: "node-2", Address: "10.0.0.22:4244"}, {Name: "node-3", Address: "10.0.0.3:4244"}})
	for _, want := range []string{"PEER_DELETED node-1 10.0.0.1:4244", "PEER_UPDATED node-2 10.0.0.22:4244", "PEER_ADDED node-3 10.0.0.3:4244"} {
		if got := next(); got != want {
			t.Errorf("after changes: %q, want %q", got, want)
		}
	}
	if got := peers.List(); len(got) != 2 || got[0].Name != "node-2" || got[1].Name != "node-3" {
		t.Errorf("List %v", got)
	}
}

// blockedStream is a Notify stream whose client reads nothing until
// release is closed.
type blockedStream struct {
	grpc.ServerStream
	ctx     context.Context
	sent    chan struct{}
	release chan struct{}
}

func (b *blockedStream) Context() context.Context { return b.ctx }
func (b *blockedStream) Send(*peerpb.ChangeNotification) error {
	select {
	case b.sent <- struct{}{}:
	default:
	}
	<-b.release
	return nil
}

// TestPeerSlowClient: a stream that falls more than its buffer behind is
// ended with an error once it has sent what it had (its client reconnects
// and reads the whole set), and Set never waits for it.
func TestPeerSlowClient(t *testing.T) {
	peers := NewPeers()
	peers.Set([]Peer{{Name: "node-1", Address: "10.0.0.1"}})
	st := &blockedStream{ctx: context.Background(), sent: make(chan struct{}, 1), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- peers.Notify(&peerpb.NotifyRequest{}, st) }()
	<-st.sent // blocked in its first Send
	start := time.Now()
	for i := range subscriberBuffer + 1 {
		peers.Set([]Peer{{Name: "node-1", Address: net.IPv4(10, 0, byte(i>>8), byte(i)).String()}})
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Set waited %s for a blocked client", d)
	}
	peers.mu.Lock()
	left := len(peers.subs)
	peers.mu.Unlock()
	if left != 0 {
		t.Errorf("%d subscribers left after one fell behind", left)
	}
	close(st.release)
	if err := <-done; err != errSubscriberBehind {
		t.Errorf("Notify of a client that fell behind: %v, want %v", err, errSubscriberBehind)
	}
}
