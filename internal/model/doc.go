// Package model holds the types the rest of kpath shares: services,
// frontends and backends as the datapath understands them. It imports
// neither Kubernetes nor eBPF, so every part can use it and tests can build
// values by hand.
package model
