package hubble

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	peerpb "github.com/cilium/cilium/api/v1/peer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kpath/kpath/internal/flows"
	"github.com/kpath/kpath/internal/pki"
)

// TestServerTLS: over the TLS listener a client with a certificate of the
// configured CA is served (and learns each peer's TLS server name); no
// certificate, one of another CA, and plaintext are refused.
func TestServerTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA(dir, "hubble-ca")
	if err != nil {
		t.Fatal(err)
	}
	name := TLSServerName("node-1", "default")
	if name != "node-1.default.hubble-grpc.cilium.io" {
		t.Fatalf("server name %q", name)
	}
	server, err := ca.Issue(dir, "server", true, []string{name}, nil)
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Issue(dir, "client", false, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA(dir, "other-ca")
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := other.Issue(dir, "stranger", false, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ServerTLS(server.CertFile, server.KeyFile, []string{ca.CertFile})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	peers := NewPeers()
	peers.Set([]Peer{{Name: "node-1", Address: "10.0.0.1:4244", TLSServerName: name}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := &Server{Ring: flows.NewRing(4), Node: "node-1", Started: time.Now(), Peers: peers}
	go func() { _ = s.Serve(ctx, tls.NewListener(ln, cfg)) }()

	roots := x509.NewCertPool()
	pem, _ := os.ReadFile(ca.CertFile)
	roots.AppendCertsFromPEM(pem)
	dial := func(creds credentials.TransportCredentials) error {
		conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(creds))
		if err != nil {
			return err
		}
		defer conn.Close()
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		defer ccancel()
		_, err = healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{})
		return err
	}
	withCert := func(p pki.Pair) credentials.TransportCredentials {
		c, err := tls.LoadX509KeyPair(p.CertFile, p.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		return credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: name, Certificates: []tls.Certificate{c}})
	}
	if err := dial(withCert(client)); err != nil {
		t.Fatalf("client with the CA's certificate: %v", err)
	}
	for what, creds := range map[string]credentials.TransportCredentials{
		"no client certificate":       credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: name}),
		"a certificate of another CA": withCert(stranger),
		"plaintext":                   insecure.NewCredentials(),
	} {
		if err := dial(creds); err == nil {
			t.Errorf("%s: served", what)
		}
	}

	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(withCert(client)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := peerpb.NewPeerClient(conn).Notify(ctx, &peerpb.NotifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if c.GetTls().GetServerName() != name || !strings.HasSuffix(c.GetAddress(), ":4244") {
		t.Errorf("peer %v, want TLS server name %s", c, name)
	}
}
