// Package nsutil runs code inside named network namespaces (those of
// `ip netns add`, under /run/netns).
package nsutil

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
)

// Do runs fn on a thread that has entered the named namespace; commands fn
// starts (os/exec) are born in it too. With name "", fn runs as it is.
func Do(name string, fn func() error) error {
	if name == "" {
		return fn()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("enter netns %s: %w", name, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// The thread is in the wrong namespace: never let Go reuse it.
		panic(fmt.Sprintf("restore netns: %v", err))
	}
	return ferr
}

// Dialer returns a DialContext-style function whose sockets are created in
// the named namespace (and keep it): how a process reaches servers that
// listen only there. With name "", it dials as usual.
func Dialer(name string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := Do(name, func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// Forward makes addr (a TCP address of the current namespace, such as a
// loopback API server) reachable at the same address inside the named
// namespace by relaying connections: the listener lives in the namespace,
// the relay dials from here. Close the returned listener to stop.
func Forward(ns, addr string) (net.Listener, error) {
	var ln net.Listener
	err := Do(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", addr, ns, err)
	}
	go Relay(ln, func(ctx context.Context) (net.Conn, error) { return (&net.Dialer{}).DialContext(ctx, "tcp", addr) })
	return ln, nil
}

// Relay copies each connection accepted on ln to one dial makes, both
// ways, until ln is closed.
func Relay(ln net.Listener, dial func(context.Context) (net.Conn, error)) {
	for {
		in, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer in.Close()
			out, err := dial(context.Background())
			if err != nil {
				return
			}
			defer out.Close()
			go func() { _, _ = io.Copy(out, in) }()
			_, _ = io.Copy(in, out)
		}()
	}
}

// NewMountNS makes a mount namespace, a slave of the caller's (the
// machine's mounts reach it, its own stay there), and keeps it by a bind
// mount on file, as ip netns keeps network namespaces, so that processes
// started later join it (nsenter --mount=FILE). file's directory is bound
// on itself with private propagation first: a namespace file can only be
// bound on such a mount.
func NewMountNS(file string) error {
	dir := filepath.Dir(file)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, args := range [][]string{{"mount", "--bind", dir, dir}, {"mount", "--make-private", dir}} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		return err
	}
	if out, err := exec.Command("unshare", "--mount="+file, "--propagation", "slave", "true").CombinedOutput(); err != nil {
		return fmt.Errorf("mount namespace %s: %v: %s", file, err, strings.TrimSpace(string(out)))
	}
	return nil
}
