// Package cniapi defines the messages between kpath-cni and kpath-agent's
// unix-socket API, and a client for them.
package cniapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"
)

// AllocateRequest asks for a pod's address.
type AllocateRequest struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	Netns       string `json:"netns"`
	HostIf      string `json:"hostIf"`
}

// AllocateResponse is the pod's network.
type AllocateResponse struct {
	Addr    netip.Addr   `json:"addr"`
	PodCIDR netip.Prefix `json:"podCIDR"`
	Gateway netip.Addr   `json:"gateway"`
	MTU     int          `json:"mtu"`
}

// AttachRequest asks the agent to attach the pod programs to HostIf.
type AttachRequest struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	HostIf      string `json:"hostIf"`
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

// CheckResponse is the pod's address (zero: none) and whether its
// programs are attached.
type CheckResponse struct {
	Addr     netip.Addr `json:"addr,omitzero"`
	Attached bool       `json:"attached"`
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

// Client talks to the agent.
type Client struct {
	Socket string
	http   *http.Client
}

// NewClient returns a client for the agent's socket.
func NewClient(socket string) *Client {
	return &Client{Socket: socket, http: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}}
}

// Do sends a request; out may be nil.
func (c *Client) Do(method, path string, in, out any) error {
	var body bytes.Buffer
	if in != nil {
		if err := json.NewEncoder(&body).Encode(in); err != nil {
			return err
		}
	}
	req, err := http.NewRequest(method, "http://kpath-agent"+path, &body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w at %s: %v", ErrUnavailable, c.Socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e Error
		_ = json.NewDecoder(resp.Body).Decode(&e)
		if resp.StatusCode == http.StatusServiceUnavailable {
			return fmt.Errorf("%w: %s", ErrUnavailable, e.Error)
		}
		return fmt.Errorf("kpath-agent: %s", e.Error)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
