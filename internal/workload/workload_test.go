package workload

import (
	"context"
	"net"
	"testing"
	"time"
)

func TestEchoAndProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- RunEcho(ctx, EchoConfig{Name: "pod-a", HTTPAddr: addr, UDPAddr: "127.0.0.1:0"}, func() { close(ready) })
	}()
	<-ready
	r := ProbeHTTP(ctx, "http://"+addr+"/", 20, 2*time.Second)
	if r.Failures != 0 || r.Backends["pod-a"] != 20 || r.P50 <= 0 || r.P99 < r.P50 {
		t.Fatalf("probe result %+v", r)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("echo server did not stop")
	}
	r = ProbeHTTP(context.Background(), "http://"+addr+"/", 2, 200*time.Millisecond)
	if r.Failures != 2 {
		t.Fatalf("probe of a stopped server: %+v", r)
	}
}
