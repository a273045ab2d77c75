# kpath — see README.md.
GO ?= go
BIN := bin

.PHONY: all build image generate test test-unit fuzz lint bench demo demo-real deps check-generated k8s-bins e2e-bins cilium-bins helm-bins coredns-bins clean

all: build

# -buildvcs=auto stamps the revision (E1 records it) even where GOFLAGS turns it off.
build:
	$(GO) build -buildvcs=auto -o $(BIN)/ ./cmd/...
	$(GO) build -o $(BIN)/loopback github.com/containernetworking/plugins/plugins/main/loopback

# The project's images (kpath, pause, echo, client) as OCI layout tarballs in
# bin/images, from static binaries built reproducibly (no paths, build IDs or
# VCS stamps in them), so one tree gives one digest; no Docker, no registry.
IMAGE_BINS := kpath kpath-agent kpath-cni kpath-pause
image: build
	CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false -ldflags "-s -w -buildid=" -o $(BIN)/static/ $(addprefix ./cmd/,$(IMAGE_BINS))
	$(BIN)/kpath image build --bin $(BIN)/static --out $(BIN)/images

# Regenerates bpf/*.c -> internal/datapath/kpath_bpfel.{go,o} (needs clang),
# and deploy/kpath.yaml from the chart (deploy/helm/kpath, rendered with
# Helm's Go packages by hack/helm, a module of its own).
generate:
	hack/install-deps.sh --bpf
	cd internal/datapath && $(GO) generate ./...
	cd hack/helm && $(GO) run . render ../../deploy/helm/kpath > ../../deploy/kpath.yaml.tmp && mv ../../deploy/kpath.yaml.tmp ../../deploy/kpath.yaml

# Fails when the committed generated files differ from a fresh generation.
check-generated: generate
	@git diff --exit-code -- internal/datapath/ deploy/kpath.yaml || { echo "generated files are stale: run make generate and commit"; exit 1; }

# The pinned Kubernetes binaries (the control plane, kubelet, kube-proxy,
# kubectl), built once into a cache directory (about 10 minutes cold on 2
# cores).
k8s-bins:
	hack/k8s/build.sh >/dev/null

# The pinned Kubernetes' e2e suite (e2e.test), ginkgo and agnhost, into the
# same cache directory (about 7 minutes cold): kpath lab conformance.
e2e-bins:
	hack/k8s/build.sh e2e >/dev/null

# From the pinned Cilium module (hack/cilium, cached; about 5.5 minutes cold):
# the hubble CLI and hubble-relay, the stock clients of kpath's Hubble API, and
# cilium-agent, cilium-cni and cilium-dbg with the agent's BPF sources, the
# real Cilium as a peer.
cilium-bins:
	hack/cilium/build.sh >/dev/null

# The helm CLI of the Helm release hack/helm pins (cached; about 2 minutes
# cold): kpath lab up --install helm installs the chart with it.
helm-bins:
	hack/helm/build.sh >/dev/null

# CoreDNS of the version hack/coredns pins (cached; about 4 minutes cold):
# the cluster DNS of kpath lab conformance.
coredns-bins:
	hack/coredns/build.sh >/dev/null

# Every test. Privileged ones skip without root, unless KPATH_REQUIRE_PRIVILEGED=1.
# -p 1: the privileged suites share the machine's bpffs and cgroups; one
# package at a time keeps them from competing for 2 cores. test/ runs for
# about 20 minutes (the real-node labs and the upstream suite's subset
# included): 45 gives it room.
test: k8s-bins e2e-bins cilium-bins helm-bins coredns-bins
	hack/install-deps.sh
	KPATH_K8S_BIN=$$(hack/k8s/build.sh) KPATH_CILIUM_BIN=$$(hack/cilium/build.sh) KPATH_HELM_BIN=$$(hack/helm/build.sh) KPATH_COREDNS_BIN=$$(hack/coredns/build.sh) $(GO) test -p 1 -count=1 -timeout 45m ./...
	$(MAKE) fuzz

# Every fuzz target for FUZZTIME each (their committed corpora also run as
# tests in go test ./...). A finding leaves its input in the package's
# testdata/fuzz: commit it, and fix what it found (docs/reliability.md). A
# failure that leaves no input is the fuzzing engine's own (a worker lost on
# a loaded machine): it is shown and the target run once more.
FUZZTIME ?= 10s
FUZZ_TARGETS := internal/cniplugin:FuzzNetConf internal/agent:FuzzConfig internal/flows:FuzzFilter \
	internal/hubble:FuzzFlowFilterAgainstHubble internal/policy:FuzzCompilerMatchesEvaluator internal/datapath:FuzzFromPod
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t#*:} ($(FUZZTIME))"; \
		for try in 1 2; do \
			if out=$$($(GO) test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) ./$${t%%:*} 2>&1); then \
				case "$$out" in *"no fuzz tests to fuzz"*) echo "$$out"; exit 1;; esac; break; \
			fi; \
			echo "$$out" | grep -v '^fuzz: elapsed' | tail -40; \
			if [ $$try = 2 ] || [ -n "$$(git status --porcelain -- ./$${t%%:*}/testdata/fuzz)" ]; then exit 1; fi; \
			echo "no input left: the engine's failure; once more"; \
		done; \
	done

# Only tests that need no privileges.
test-unit:
	$(GO) test -count=1 ./internal/lb/... ./internal/model/... ./internal/workload/...

lint:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2000000x ./internal/datapath/

demo: build k8s-bins cilium-bins
	hack/install-deps.sh
	KPATH=$(BIN)/kpath hack/demo.sh

# The demo on real nodes: a real kubelet and containerd on each, kpath
# installed by its chart with the pinned helm, from make image's images.
demo-real: build k8s-bins cilium-bins helm-bins
	hack/install-deps.sh
	$(MAKE) image
	DEMO_REAL=1 KPATH=$(BIN)/kpath hack/demo.sh

deps:
	hack/install-deps.sh --bpf

clean:
	rm -rf $(BIN)
