package lab

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/kpath/kpath/internal/testenv"
)

// Running is a lab supervised by this process (a test's, a benchmark's),
// not by a `kpath lab up` supervisor of its own.
type Running struct {
	State  *State
	Client kubernetes.Interface
	// ControlPlane is the lab's etcd and API server, to stop and start.
	ControlPlane *testenv.Env
	// Runtimes are the nodes' runtimes by node name (the lab's own
	// runtime; none on real nodes), to crash.
	Runtimes map[string]*Runtime
	stop     func() error
}

// Start supervises a lab in the background (o.Dir, o.Name as for
// Supervise) and returns once it is ready, or fails after timeout. A lab
// of the same name left in o.Dir is swept first.
func Start(ctx context.Context, o Options, timeout time.Duration) (*Running, error) {
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	_ = Down(o.Dir, o.Name, func(string, ...any) {})
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	r := &Running{}
	envs := make(chan *testenv.Env, 1)
	given := o.ControlPlane
	o.ControlPlane = func(e *testenv.Env) {
		envs <- e
		if given != nil {
			given(e)
		}
	}
	var rmu sync.Mutex
	runtimes := map[string]*Runtime{}
	givenRT := o.NodeRuntime
	o.NodeRuntime = func(rt *Runtime) {
		rmu.Lock()
		runtimes[rt.Node] = rt
		rmu.Unlock()
		if givenRT != nil {
			givenRT(rt)
		}
	}
	go func() { done <- Supervise(lctx, o) }()
	stopped := false
	r.stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		err := <-done
		if derr := Down(o.Dir, o.Name, o.Log); err == nil {
			err = derr
		}
		return err
	}
	for deadline := time.Now().Add(timeout); ; time.Sleep(100 * time.Millisecond) {
		st, err := LoadState(o.Dir)
		if err == nil && st.Error != "" {
			_ = r.stop()
			return nil, fmt.Errorf("lab %s: %s", o.Name, st.Error)
		}
		if err == nil && st.Ready {
			r.State = st
			r.ControlPlane = <-envs
			rmu.Lock()
			r.Runtimes = runtimes
			rmu.Unlock()
			break
		}
		if time.Now().After(deadline) {
			_ = r.stop()
			return nil, fmt.Errorf("lab %s not ready after %s", o.Name, timeout)
		}
	}
	c, err := Client(r.State)
	if err != nil {
		_ = r.stop()
		return nil, err
	}
	r.Client = c
	return r, nil
}

// Stop ends the lab's processes and removes everything it made; calling
// it again does nothing.
func (r *Running) Stop() error { return r.stop() }
