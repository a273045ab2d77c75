// Command helm renders and lints kpath's chart with Helm's Go packages, as
// `helm template` and `helm lint` do, without a cluster: it is how make
// generates deploy/kpath.yaml and how the tests check the chart. Its own
// module (Helm v4.3.2, whose Kubernetes modules are v0.36, as the project's)
// keeps Helm out of kpath's binaries.
//
//	go run . render CHART [--namespace NS] [--set KEY=VALUE]...
//	go run . lint CHART [--set KEY=VALUE]...
package main

import (
	"fmt"
	"os"
	"strings"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/release/v1"
	"helm.sh/helm/v4/pkg/strvals"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "helm:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: render|lint CHART [--namespace NS] [--set KEY=VALUE]...")
	}
	verb, chartDir := args[0], args[1]
	ns := "kube-system"
	vals := map[string]any{}
	for i := 2; i < len(args); i++ {
		switch {
		case args[i] == "--namespace" && i+1 < len(args):
			ns = args[i+1]
			i++
		case args[i] == "--set" && i+1 < len(args):
			if err := strvals.ParseInto(args[i+1], vals); err != nil {
				return fmt.Errorf("--set %s: %w", args[i+1], err)
			}
			i++
		default:
			return fmt.Errorf("unknown argument %q", args[i])
		}
	}
	switch verb {
	case "lint":
		res := action.NewLint().Run([]string{chartDir}, vals)
		var bad []string
		for _, m := range res.Messages {
			if m.Severity > support.InfoSev { // information (an icon is recommended) is no finding
				bad = append(bad, m.Error())
			}
		}
		for _, err := range res.Errors {
			bad = append(bad, err.Error())
		}
		if len(bad) > 0 {
			return fmt.Errorf("lint %s:\n%s", chartDir, strings.Join(bad, "\n"))
		}
		return nil
	case "render":
		ch, err := loader.Load(chartDir)
		if err != nil {
			return err
		}
		out, err := render(ch, ns, vals)
		if err != nil {
			return err
		}
		fmt.Print(out)
		return nil
	}
	return fmt.Errorf("unknown verb %q: want render or lint", verb)
}

// render is `helm template kpath CHART --namespace NS` for the pinned
// Kubernetes version.
func render(ch *chartv2.Chart, ns string, vals map[string]any) (string, error) {
	inst := action.NewInstall(&action.Configuration{})
	inst.DryRunStrategy = action.DryRunClient
	inst.ReleaseName = "kpath"
	inst.Namespace = ns
	inst.Replace = true
	kv, err := common.ParseKubeVersion("v1.34.4")
	if err != nil {
		return "", err
	}
	inst.KubeVersion = kv
	r, err := inst.Run(ch, vals)
	if err != nil {
		return "", err
	}
	rel, ok := r.(*v1.Release)
	if !ok {
		return "", fmt.Errorf("unexpected release type %T", r)
	}
	return "# Generated from deploy/helm/kpath by hack/helm (make generate): do not edit.\n" + strings.TrimSpace(rel.Manifest) + "\n", nil
}
