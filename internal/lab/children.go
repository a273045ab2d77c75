package lab

import (
	"context"
	"errors"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// children are the node processes a supervisor started (agents,
// kube-proxy). They end when the supervisor returns: Pdeathsig covers a
// supervisor process that dies, not one running as a goroutine of a
// longer-lived command (kpath bench), whose labs come and go.
type children struct {
	mu       sync.Mutex
	procs    []*exec.Cmd
	done     []chan struct{}
	stopping chan struct{} // closed by stop: no more restarts
	once     sync.Once
}

// Restart backoff, as a kubelet's for a crashing container: doubling from
// a second to 30 s, back to a second after 60 s of running.
const (
	restartFirst = time.Second
	restartMax   = 30 * time.Second
	restartReset = time.Minute
)

// keep starts the command mk makes and, each time it exits, starts a new
// one after the backoff, logged, until stop (a DaemonSet's pod restarting
// its crashed container). The channel closes when the first one exits.
func (c *children) keep(what string, mk func() (*exec.Cmd, func(), error), log func(string, ...any)) (<-chan struct{}, error) {
	cmd, onExit, err := mk()
	if err != nil {
		return nil, err
	}
	first, err := c.start(cmd, onExit)
	if err != nil {
		return nil, err
	}
	go func() {
		exited, wait := first, restartFirst
		for {
			started := time.Now()
			select {
			case <-exited:
			case <-c.stopping:
				return
			}
			if time.Since(started) > restartReset {
				wait = restartFirst
			}
			log("%s exited (%v); restarting in %s", what, cmd.ProcessState, wait)
			select {
			case <-time.After(wait):
			case <-c.stopping:
				return
			}
			wait = min(2*wait, restartMax)
			if cmd, onExit, err = mk(); err == nil {
				exited, err = c.start(cmd, onExit)
			}
			if err != nil {
				log("%s: not restarted: %v", what, err)
				return
			}
		}
	}()
	return first, nil
}

// keepRuntime runs a node's runtime until ctx ends, starting it again
// with the agents' backoff when it fails, as a kubelet that crashed would
// be by its service manager.
func keepRuntime(ctx context.Context, rt *Runtime, log func(string, ...any)) {
	wait := restartFirst
	for {
		started := time.Now()
		err := rt.Run(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > restartReset {
			wait = restartFirst
		}
		log("node runtime on %s stopped (%v); restarting in %s", rt.Node, err, wait)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return
		}
		wait = min(2*wait, restartMax)
	}
}

// errStopping: the supervisor is stopping its children.
var errStopping = errors.New("the lab is stopping")

// start starts cmd, unless stop has begun (checked under the lock stop
// holds, so no process starts after stop has signalled the others). The
// channel closes when it has exited and onExit ran.
func (c *children) start(cmd *exec.Cmd, onExit func()) (<-chan struct{}, error) {
	c.once.Do(func() { c.stopping = make(chan struct{}) })
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.stopping:
		onExit()
		return nil, errStopping
	default:
	}
	if err := cmd.Start(); err != nil {
		onExit()
		return nil, err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); onExit(); close(done) }()
	c.procs, c.done = append(c.procs, cmd), append(c.done, done)
	return done, nil
}

// stop sends SIGTERM to every child still running, and SIGKILL to those
// not gone after grace; none is restarted after.
func (c *children) stop(grace time.Duration) {
	c.once.Do(func() { c.stopping = make(chan struct{}) })
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.stopping:
	default:
		close(c.stopping)
	}
	for _, p := range c.procs {
		_ = p.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for i, done := range c.done {
		select {
		case <-done:
		case <-time.After(time.Until(deadline)):
			_ = c.procs[i].Process.Kill()
			<-done
		}
	}
}
