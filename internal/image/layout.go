package image

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/distribution/reference"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Annotations of the layout's index naming its image: containerd's (the
// full name; Docker 25+ reads it too) and OCI's (the tag).
const (
	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"
)

type blob struct {
	digest v1.Hash
	open   func() (io.ReadCloser, error)
	size   int64
}

// WriteLayout writes img, named ref, to file as a tarball of an OCI image
// layout (oci-layout, index.json, blobs/sha256/...), entries in a fixed
// order and times at the epoch, so the same image gives the same bytes. The
// file is replaced whole (written aside, then renamed).
func WriteLayout(file, ref string, img v1.Image) error {
	full, err := Name(ref)
	if err != nil {
		return err
	}
	n, _ := reference.ParseNormalizedNamed(full)
	tag := n.(reference.NamedTagged).Tag()
	manifest, err := img.RawManifest()
	if err != nil {
		return fmt.Errorf("image %s: manifest: %w", ref, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	mt, err := img.MediaType()
	if err != nil {
		return err
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	platform := cf.Platform()
	index, err := json.Marshal(v1.IndexManifest{
		SchemaVersion: 2, MediaType: types.OCIImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType: mt, Digest: digest, Size: int64(len(manifest)), Platform: platform,
			Annotations: map[string]string{annotationContainerdName: full, annotationRefName: tag},
		}},
	})
	if err != nil {
		return err
	}
	blobs := []blob{bytesBlob(digest, manifest), bytesBlob(cfgName, cfg)}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return err
		}
		size, err := l.Size()
		if err != nil {
			return err
		}
		blobs = append(blobs, blob{digest: d, open: l.Compressed, size: size})
	}
	slices.SortFunc(blobs, func(a, b blob) int { return strings.Compare(a.digest.String(), b.digest.String()) })
	blobs = slices.CompactFunc(blobs, func(a, b blob) bool { return a.digest == b.digest })

	tmp, err := os.CreateTemp(filepath.Dir(file), ".image-*.tar")
	if err != nil {
		return fmt.Errorf("write image %s: %w", ref, err)
	}
	defer os.Remove(tmp.Name())
	tw := tar.NewWriter(tmp)
	write := func(name string, size int64, r io.Reader) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := io.Copy(tw, r)
		return err
	}
	err = write("oci-layout", int64(len(`{"imageLayoutVersion":"1.0.0"}`)), strings.NewReader(`{"imageLayoutVersion":"1.0.0"}`))
	if err == nil {
		err = write("index.json", int64(len(index)), strings.NewReader(string(index)))
	}
	for _, b := range blobs {
		if err != nil {
			break
		}
		var rc io.ReadCloser
		if rc, err = b.open(); err == nil {
			err = write("blobs/"+b.digest.Algorithm+"/"+b.digest.Hex, b.size, rc)
			rc.Close()
		}
	}
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Close()
	}
	if err == nil {
		err = os.Rename(tmp.Name(), file)
	}
	if err != nil {
		tmp.Close()
		return fmt.Errorf("write image %s to %s: %w", ref, file, err)
	}
	return nil
}

func bytesBlob(d v1.Hash, b []byte) blob {
	return blob{digest: d, size: int64(len(b)), open: func() (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader(string(b))), nil
	}}
}
