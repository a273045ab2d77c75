// Package cniapi defines the messages between kpath-cni and kpath-agent's
// unix-socket API, and a client for them.
package cniapi

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// AllocateRequest asks for a pod's address.
type AllocateRequest struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	Netns       string `json:"netns"`
	HostIf      string `json:"hostIf"`
	// PodNamespace and PodName come from the runtime's K8S_POD_NAMESPACE and
	// K8S_POD_NAME arguments; the agent keeps them with the address so that
	// it finds the pod's policy, also after a restart.
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
}

// AllocateResponse is the pod's network.
type AllocateResponse struct {
	Addr    netip.Addr   `json:"addr"`
	PodCIDR netip.Prefix `json:"podCIDR"`
	Gateway netip.Addr   `json:"gateway"`
	MTU     int          `json:"mtu"`
}

// AttachRequest asks the agent to put the pod under policy and attach the
// pod programs to HostIf. The agent answers once the pod's policy is in the
// datapath, so the workload never runs unprotected.
type AttachRequest struct {
	ContainerID  string     `json:"containerID"`
	IfName       string     `json:"ifName"`
	HostIf       string     `json:"hostIf"`
	Addr         netip.Addr `json:"addr,omitzero"`
	PodNamespace string     `json:"podNamespace,omitempty"`
	PodName      string     `json:"podName,omitempty"`
}

// ReleaseRequest frees a pod's address and detaches its programs.
type ReleaseRequest struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// ReleaseResponse says what was released.
type ReleaseResponse struct {
	Released bool       `json:"released"`
	Addr     netip.Addr `json:"addr,omitzero"`
	HostIf   string     `json:"hostIf,omitempty"`
}

// CheckRequest asks what the agent holds for a pod.
type CheckRequest struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	HostIf      string `json:"hostIf"`
}

// CheckResponse is the pod's address (zero: none), whether its programs
// are attached, and whether its address is bound to its interface (without
// the binding, the pod's programs drop everything it sends).
type CheckResponse struct {
	Addr     netip.Addr `json:"addr,omitzero"`
	Attached bool       `json:"attached"`
	Bound    bool       `json:"bound"`
}

// Attachment is one valid (container, interface) pair for GC.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// GCRequest lists the attachments to keep; everything else is released.
type GCRequest struct {
	Valid []Attachment `json:"valid"`
}

// GCResponse lists the addresses released.
type GCResponse struct {
	Released []netip.Addr `json:"released"`
}

// Error is the body of a failed request.
type Error struct {
	Error string `json:"error"`
}

// ErrUnavailable wraps failures that mean "try again later": the agent is
// not running, or not ready.
var ErrUnavailable = errors.New("kpath-agent is not available")

// Client talks to the agent. It speaks just enough HTTP/1.0 over the unix
// socket for these JSON requests, without net/http: kpath-cni is exec'd for
// every pod, and net/http with its TLS and compression packages roughly
// doubles the binary's start-up time.
type Client struct {
	Socket  string
	Timeout time.Duration
}

// NewClient returns a client for the agent's socket.
func NewClient(socket string) *Client {
	return &Client{Socket: socket, Timeout: 30 * time.Second}
}

// Do sends a request; out may be nil.
func (c *Client) Do(method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	conn, err := net.DialTimeout("unix", c.Socket, c.Timeout)
	if err != nil {
		return fmt.Errorf("%w at %s: %v", ErrUnavailable, c.Socket, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(c.Timeout))
	req := fmt.Sprintf("%s %s HTTP/1.0\r\nHost: kpath-agent\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", method, path, len(body))
	if _, err := conn.Write(append([]byte(req), body...)); err != nil {
		return fmt.Errorf("%w at %s: %v", ErrUnavailable, c.Socket, err)
	}
	r := bufio.NewReader(conn)
	status, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("%w at %s: no answer: %v", ErrUnavailable, c.Socket, err)
	}
	var (
		proto string
		code  int
	)
	if _, err := fmt.Sscanf(status, "%s %d", &proto, &code); err != nil {
		return fmt.Errorf("kpath-agent: bad status line %q", strings.TrimSpace(status))
	}
	for { // headers; the body runs to the end (HTTP/1.0 closes)
		line, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("kpath-agent: truncated answer: %w", err)
		}
		if strings.TrimSpace(line) == "" {
			break
		}
	}
	if code != 200 {
		var e Error
		_ = json.NewDecoder(r).Decode(&e)
		if code == 503 {
			return fmt.Errorf("%w: %s", ErrUnavailable, e.Error)
		}
		return fmt.Errorf("kpath-agent: %s", e.Error)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(r).Decode(out)
}
