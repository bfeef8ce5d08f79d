// Command kube is one binary for the Kubernetes control-plane commands the sandbox runs
// (kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy), chosen by its first
// argument. One binary means one link instead of four on the cold path, which is most of the
// build's wall time after the shared packages compile (issue 14, "one binary for the
// control-plane commands"). Each branch is what upstream's own main does for that command:
// cmd/<name>/<name>.go in k8s.io/kubernetes at the version go.mod pins.
package main

import (
	"fmt"
	"os"
	_ "time/tzdata" // kube-apiserver's main imports it for CronJob time zones

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

var commands = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-proxy":              proxy.NewProxyCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
}

func main() {
	if len(os.Args) < 2 || commands[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: kube {kube-apiserver|kube-controller-manager|kube-scheduler|kube-proxy} [flags]")
		os.Exit(2)
	}
	command := commands[os.Args[1]]()
	// cobra reads os.Args[1:] by default; drop our dispatch word so the component sees only
	// its own flags.
	command.SetArgs(os.Args[2:])
	os.Exit(cli.Run(command))
}
