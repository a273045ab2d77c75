// Package helm carries kpath's Helm chart (deploy/helm/kpath) inside the
// kpath binary, so an installed kpath installs it (kpath lab up --install
// helm) from any directory, the chart being the one of its own version.
package helm

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// chart is the chart's directory; "all:" keeps _helpers.tpl, which embed
// would otherwise skip.
//
//go:embed all:kpath
var chart embed.FS

// WriteChart writes the chart into dir/kpath and returns that directory.
func WriteChart(dir string) (string, error) {
	err := fs.WalkDir(chart, "kpath", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		dst := filepath.Join(dir, filepath.FromSlash(p))
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		data, err := chart.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, data, 0o644)
	})
	if err != nil {
		return "", fmt.Errorf("write kpath's chart: %w", err)
	}
	return filepath.Join(dir, "kpath"), nil
}
