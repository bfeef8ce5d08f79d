// Command coredns is CoreDNS with only the plugins the sandbox's Corefile uses (bind, errors,
// health, ready, kubernetes, cache; no forward, so no upstream and no loop plugin). Upstream's
// own main (coredns.go in github.com/coredns/coredns) imports core/plugin, which links every
// plugin; this one imports the same coremain and registers just these, so the build stays
// small. The server orders plugins by core/dnsserver's directive list regardless of import order.
package main

import (
	_ "github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
