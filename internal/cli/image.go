package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kpath/kpath/internal/image"
	"github.com/kpath/kpath/internal/testenv"
)

func newImageCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Build kpath's container images without Docker or a registry"}
	var binDir, outDir, tag, relay string
	build := &cobra.Command{
		Use:   "build",
		Short: "Build the project's images (kpath, pause, echo, client) as OCI layout tarballs",
		Long: `Build the project's images from static binaries (make image builds them first) as
tarballs of OCI image layouts, one per image, named by repository: OUT/kpath.tar,
OUT/pause.tar, ... The same binaries give the same digests. Load them with
ctr -n k8s.io images import OUT/kpath.tar (containerd), docker load or podman load,
and run them with imagePullPolicy: Never. With --hubble-relay ("auto": make
cilium-bins' build, when there is one) also OUT/hubble-relay.tar, Cilium's
hubble-relay of the pinned version, which the chart runs with hubble.relay.enabled.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			specs, err := image.Project(binDir, tag)
			if err != nil {
				return err
			}
			if relay == "auto" {
				relay = ""
				if d, err := testenv.CiliumBinDir(); err == nil {
					if _, err := os.Stat(filepath.Join(d, "hubble-relay")); err == nil {
						relay = filepath.Join(d, "hubble-relay")
					}
				}
			}
			if relay != "" {
				s, err := image.HubbleRelay(relay, testenv.PinnedCilium)
				if err != nil {
					return err
				}
				specs = append(specs, s)
			}
			if err := os.MkdirAll(outDir, 0o755); err != nil {
				return err
			}
			for _, s := range specs {
				img, err := image.Build(s)
				if err != nil {
					return err
				}
				repo, _, _ := strings.Cut(s.Ref, ":")
				file := filepath.Join(outDir, filepath.Base(repo)+".tar")
				if err := image.WriteLayout(file, s.Ref, img); err != nil {
					return err
				}
				d, err := img.Digest()
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\t%s\n", s.Ref, d, file)
			}
			return nil
		},
	}
	build.Flags().StringVar(&binDir, "bin", "bin/static", "directory of the static binaries: "+strings.Join(image.Binaries, ", "))
	build.Flags().StringVar(&outDir, "out", "bin/images", "where the tarballs go")
	build.Flags().StringVar(&tag, "tag", image.Tag, "the images' tag (not latest)")
	build.Flags().StringVar(&relay, "hubble-relay", "auto", `hubble-relay binary to build kpath/hubble-relay:`+testenv.PinnedCilium+` from ("auto": make cilium-bins' if built; "" for none)`)
	cmd.AddCommand(build)
	return cmd
}
