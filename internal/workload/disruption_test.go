package workload

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"
)

// TestDisruption: connections held to an echo server stay up and keep
// their backend while it runs; when it goes, every one of them is counted
// cut (once, never reopened) and the stream counts failures.
func TestDisruption(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	echoCtx, stopEcho := context.WithCancel(ctx)
	e, err := StartEcho(echoCtx, EchoConfig{Name: "a", HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	addr := e.HTTP[0].String()
	d, err := StartDisruption(ctx, DisruptionConfig{Hold: []string{addr}, Conns: 3, Stream: []string{"http://" + addr + "/"},
		Interval: 10 * time.Millisecond, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	waitStatus := func(what string, ok func(DisruptionStatus) bool) DisruptionStatus {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if s := d.Status(); ok(s) {
				return s
			}
		}
		t.Fatalf("%s: %+v", what, d.Status())
		return DisruptionStatus{}
	}
	s := waitStatus("3 established, 10 requests each, 10 streamed", func(s DisruptionStatus) bool {
		return s.Established == 3 && s.Held[2].Requests >= 10 && s.Streams[0].Requests >= 10
	})
	if s.Cut != 0 || s.Streams[0].Failures != 0 || s.Held[0].Backend != "a" {
		t.Fatalf("with the server up: %+v", s)
	}
	// The status endpoint serves the same.
	rec := httptest.NewRecorder()
	d.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	var got DisruptionStatus
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || got.Established != 3 {
		t.Fatalf("status endpoint: %v %s", err, rec.Body)
	}
	stopEcho()
	_ = e.Wait()
	s = waitStatus("every held connection cut", func(s DisruptionStatus) bool { return s.Cut == 3 && s.Streams[0].Failures > 0 })
	for _, h := range s.Held {
		if h.Cut == "" || h.Error == "" {
			t.Errorf("held connection %+v not marked cut", h)
		}
	}
	if _, err := StartDisruption(ctx, DisruptionConfig{Hold: []string{"nohost"}}); err == nil {
		t.Error("a target without a port accepted")
	}
}
