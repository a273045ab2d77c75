package hubble

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync"
	"time"
)

// ServerTLS is the TLS configuration of a Hubble server's TCP listener, as
// Cilium's Hubble has it: TLS 1.3, the server's certificate and key from
// files, and a client certificate signed by one of the clientCAFiles
// required (mTLS). gRPC over it needs ALPN h2. The certificate is read
// again when its files change (a renewed certificate needs no restart).
func ServerTLS(certFile, keyFile string, clientCAFiles []string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" || len(clientCAFiles) == 0 {
		return nil, fmt.Errorf("hubble TLS: want a certificate file, a key file and at least one client CA file")
	}
	pool := x509.NewCertPool()
	for _, f := range clientCAFiles {
		pem, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("hubble TLS client CA: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("hubble TLS client CA %s: no PEM certificate in it", f)
		}
	}
	kp := &keyPair{cert: certFile, key: keyFile}
	if _, err := kp.get(nil); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		NextProtos:     []string{"h2"},
		ClientAuth:     tls.RequireAndVerifyClientCert,
		ClientCAs:      pool,
		GetCertificate: kp.get,
	}, nil
}

// keyPair is a certificate and key read from files, again when either
// file's modification time moves.
type keyPair struct {
	cert, key string

	mu     sync.Mutex
	stamp  [2]time.Time
	loaded *tls.Certificate
}

func (k *keyPair) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	var stamp [2]time.Time
	for i, f := range []string{k.cert, k.key} {
		st, err := os.Stat(f)
		if err != nil {
			return nil, fmt.Errorf("hubble TLS: %w", err)
		}
		stamp[i] = st.ModTime()
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.loaded != nil && stamp == k.stamp {
		return k.loaded, nil
	}
	c, err := tls.LoadX509KeyPair(k.cert, k.key)
	if err != nil {
		if k.loaded != nil {
			return k.loaded, nil // mid-rotation: keep serving the last good one
		}
		return nil, fmt.Errorf("hubble TLS certificate %s and key %s: %w", k.cert, k.key, err)
	}
	k.loaded, k.stamp = &c, stamp
	return k.loaded, nil
}
