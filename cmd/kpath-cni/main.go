// Command kpath-cni is kpath's CNI plugin; install it as "kpath" in the
// CNI plugin directory (the network configuration's "type").
package main

import "github.com/kpath/kpath/internal/cniplugin"

func main() { cniplugin.Main() }
