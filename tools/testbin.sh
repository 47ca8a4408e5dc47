#!/usr/bin/env bash
# Builds the test control-plane binaries once, into a cache outside the repo:
#   ${KUBETRAIN_CACHE:-~/.cache/kubetrain}/testbin/<name>-<version>/<name>
# Versions come from tools/versions.env, so a bump rebuilds only what changed.
# A binary already in $KUBEBUILDER_ASSETS, or on PATH at the pinned version,
# is used instead of building it (the lookup is localkube/localkube/binaries.py, the
# same code the tests use). Prometheus and promtool are Debian's package.
#
# Usage: tools/testbin.sh [NAME...]    (default: all of them)
# Env:   KUBETRAIN_CACHE, KUBEBUILDER_ASSETS, KUBETRAIN_TESTBIN_JOBS (build
#        lanes run side by side, default 2), PYTHON (default python3).
# Writes testbin/current.env: KUBETRAIN_TESTBIN_<NAME>=<path> for each binary.
set -euo pipefail

TOOLS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$TOOLS")
# shellcheck source-path=SCRIPTDIR source=versions.env
source "$TOOLS/versions.env"
# Absolute, because go install needs an absolute GOBIN; exported, because
# binaries.py derives the same cache directory from it.
KUBETRAIN_CACHE=$(mkdir -p "${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain}" && cd "${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain}" && pwd)
export KUBETRAIN_CACHE
CACHE=$KUBETRAIN_CACHE/testbin
PYTHON=${PYTHON:-python3}
JOBS=${KUBETRAIN_TESTBIN_JOBS:-2}

# Static, path-free binaries built by the Go that is installed, never a
# toolchain downloaded behind our back.
export GOTOOLCHAIN=local GOFLAGS="-trimpath -buildvcs=false" CGO_ENABLED=0

KUBE_NAMES=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
OTHER_NAMES=(etcd helm minio kwok kueue scheduler-plugins)

binaries_py() { "$PYTHON" "$ROOT/localkube/localkube/binaries.py" "$@"; }
declare -A STATE=() WHERE=()

die() {
	echo "testbin: $*" >&2
	exit 1
}

# --- builders: each writes one binary into the directory given as $1 ---------

kube_ldflags() {
	local minor=${KUBERNETES_VERSION#v1.}
	minor=${minor%%.*}
	local flags="-s -w" pkg
	# component-base feeds --version and /version; client-go feeds kubectl's
	# client version. Both default to v0.0.0-master without these.
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		flags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1"
		flags+=" -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
	done
	echo "$flags"
}

require_pin() { # go.mod directory, module, version
	grep -qE "^[[:space:]]*(require[[:space:]]+)?$2 $3( |\$)" "$TOOLS/$1/go.mod" ||
		die "tools/$1/go.mod does not pin $2 $3 (tools/versions.env does): run tools/pin-modules.sh"
}

build_kube() { # out-dir name
	require_pin kubernetes k8s.io/kubernetes "$KUBERNETES_VERSION"
	(cd "$TOOLS/kubernetes" &&
		go build -p 2 -ldflags "$(kube_ldflags)" -o "$1/$2" "k8s.io/kubernetes/cmd/$2")
}

build_etcd() { # out-dir
	require_pin etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
	(cd "$TOOLS/etcd" && go build -p 2 -ldflags "-s -w" -o "$1/etcd" go.etcd.io/etcd/server/v3)
}

build_helm() { # out-dir
	local gomod client_go sub pkg=helm.sh/helm/v3 flags
	# Like helm's Makefile: the Kubernetes version helm assumes offline (helm
	# template, lint) is the minor of the client-go it was built with.
	gomod=$(cd "$1" && go mod download -json "helm.sh/helm/v3@$HELM_VERSION" |
		sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
	client_go=$(sed -n 's/^[[:space:]]*k8s\.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$gomod")
	[[ -n $client_go ]] || die "no k8s.io/client-go in $gomod"
	flags="-s -w -X $pkg/internal/version.version=$HELM_VERSION -X $pkg/internal/version.gitTreeState=clean"
	for sub in lint/rules chartutil; do
		flags+=" -X $pkg/pkg/$sub.k8sVersionMajor=1 -X $pkg/pkg/$sub.k8sVersionMinor=$client_go"
	done
	(cd "$1" && GOBIN=$1 go install -p 2 -ldflags "$flags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
}

build_minio() { # out-dir
	# v0.0.0-20260212201848-7aac2a2c5b7c -> the commit's time and hash, stamped
	# the way MinIO's own buildscripts stamp a development build.
	local stamp=${MINIO_VERSION#v0.0.0-} commit=${MINIO_VERSION##*-}
	stamp=${stamp%%-*}
	local day="${stamp:0:4}-${stamp:4:2}-${stamp:6:2}"
	local time="${stamp:8:2}:${stamp:10:2}:${stamp:12:2}"
	local pkg=github.com/minio/minio/cmd
	(cd "$1" && GOBIN=$1 go install -p 2 -ldflags "-s -w \
		-X $pkg.Version=${day}T${time}Z -X $pkg.ReleaseTag=DEVELOPMENT.${day}T${time//:/-}Z \
		-X $pkg.CommitID=$commit -X $pkg.ShortCommitID=$commit -X $pkg.CopyrightYear=${day:0:4}" \
		"github.com/minio/minio@$MINIO_VERSION")
}

build_kwok() { # out-dir
	(cd "$1" && GOBIN=$1 go install -p 2 -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION")
}

build_kueue() { # out-dir
	local pkg=sigs.k8s.io/kueue/pkg/version dir
	# GitVersion is what kueue logs at start ("Initializing"); it has no --version.
	(cd "$1" && GOBIN=$1 go install -p 2 -ldflags "-s -w -X $pkg.GitVersion=$KUEUE_VERSION" \
		"sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION")
	# The CRDs and webhook configurations of the same release, copied beside the
	# binary: localkube/localkube/kueue.py installs them from there, so it needs
	# neither the module cache nor network at test time.
	dir=$(cd "$1" && go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[[ -d $dir/config/components/crd/bases ]] || die "no config/components/crd/bases in $dir"
	mkdir -p "$1/manifests/crd"
	cp "$dir"/config/components/crd/bases/*.yaml "$1/manifests/crd/"
	# Its patches say which CRDs go through the conversion webhook.
	cp "$dir/config/components/crd/kustomization.yaml" "$1/manifests/crd-kustomization.yaml"
	cp "$dir/config/components/webhook/manifests.yaml" "$1/manifests/webhook.yaml"
	chmod -R u+w "$1/manifests"
}

json_field() { # field: its value in the go mod download -json on stdin
	sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}\$/\1/p"
}

replace_cloud_provider() { # out-dir modfile
	# scheduler-plugins pins k8s.io/cloud-provider v0.31.8, which the module
	# proxy lists without a zip (403); see versions.env.
	local module=k8s.io/cloud-provider version=$SCHEDULER_PLUGINS_CLOUD_PROVIDER_VERSION info m
	info=$(cd "$1" && go mod download -json "$module@$version")
	go mod edit -replace "$module=$module@$version" "$2"
	# Its k8s.io requirements are raised too (they are replaced by v0.31.8 all
	# the same), so the go.mod stays consistent: otherwise go loads the whole
	# module graph, which needs more modules the proxy lacks.
	for m in $(sed -n "s/^[[:space:]]*\(k8s\.io\/[^ ]*\) $version\( .*\)\{0,1\}\$/\1/p" \
		"$(json_field GoMod <<<"$info")"); do
		go mod edit -require "$m@$version" "$2"
	done
	# Its go.sum lines by hand: -mod=mod would load that whole graph too.
	{
		echo "$module $version $(json_field Sum <<<"$info")"
		echo "$module $version/go.mod $(json_field GoModSum <<<"$info")"
	} >>"${2%.mod}.sum"
}

build_scheduler_plugins() { # out-dir
	local dir mod=$1/build.mod
	# Built inside the module, not go installed: its go.mod replaces every
	# k8s.io staging module (go install refuses replace directives), and
	# building there honours them. The module cache is read-only, hence -o,
	# and -modfile: a copy of its go.mod and go.sum that we may edit.
	dir=$(cd "$1" && go mod download -json "sigs.k8s.io/scheduler-plugins@$SCHEDULER_PLUGINS_VERSION" |
		json_field Dir)
	[[ -f $dir/go.mod ]] || die "sigs.k8s.io/scheduler-plugins@$SCHEDULER_PLUGINS_VERSION: no module directory"
	cp "$dir/go.mod" "$mod"
	cp "$dir/go.sum" "${mod%.mod}.sum"
	chmod u+w "$mod" "${mod%.mod}.sum"
	[[ -z $SCHEDULER_PLUGINS_CLOUD_PROVIDER_VERSION ]] || replace_cloud_provider "$1" "$mod"
	# Its kube-scheduler main prints this with --version (as its Makefile stamps it).
	(cd "$dir" && go build -p 2 -modfile "$mod" -o "$1/scheduler-plugins" \
		-ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$SCHEDULER_PLUGINS_VERSION" \
		./cmd/scheduler) || die "go build failed"
	rm -f "$mod" "${mod%.mod}.sum"
	# The PodGroup CRD of the same release, beside the binary for
	# localkube/localkube/coscheduling.py (as for Kueue).
	[[ -f $dir/manifests/coscheduling/crd.yaml ]] || die "no manifests/coscheduling/crd.yaml in $dir"
	mkdir -p "$1/manifests"
	cp "$dir/manifests/coscheduling/crd.yaml" "$1/manifests/podgroup-crd.yaml"
	chmod -R u+w "$1/manifests"
}

version_of() {
	case $1 in
	kube-* | kubectl) echo "$KUBERNETES_VERSION" ;;
	etcd) echo "$ETCD_VERSION" ;;
	helm) echo "$HELM_VERSION" ;;
	minio) echo "$MINIO_VERSION" ;;
	kwok) echo "$KWOK_VERSION" ;;
	kueue) echo "$KUEUE_VERSION" ;;
	scheduler-plugins) echo "$SCHEDULER_PLUGINS_VERSION" ;;
	esac
}

# Prints one progress line, or builds and prints "building" then "done".
ensure() { # name
	local name=$1 version dir=${WHERE[$1]} tmp log start
	version=$(version_of "$name")
	case ${STATE[$name]} in
	cached)
		echo "$name $version: cached"
		return 0
		;;
	found)
		echo "$name $version: using $dir"
		return 0
		;;
	esac
	command -v go >/dev/null || die "$name: go is not installed (needs the Go in tools/*/go.mod)"
	echo "$name $version: building ..."
	start=$SECONDS
	log="$CACHE/logs/$name-$version.log"
	tmp=$(mktemp -d "$CACHE/.build-$name.XXXXXX")
	# A subshell, so that die in a builder ends the build, not the lane. The
	# binary is checked too: errexit is off in an if condition, so a builder
	# whose go command failed can still return 0.
	if ! (case $name in
		kube-* | kubectl) build_kube "$tmp" "$name" ;;
		etcd) build_etcd "$tmp" ;;
		helm) build_helm "$tmp" ;;
		minio) build_minio "$tmp" ;;
		kwok) build_kwok "$tmp" ;;
		kueue) build_kueue "$tmp" ;;
		scheduler-plugins) build_scheduler_plugins "$tmp" ;;
		esac) >"$log" 2>&1 || [[ ! -x $tmp/$name ]]; then
		fail "$name" "$log" "$tmp"
		return 1
	fi
	# One rename, so a killed build never leaves a half-written binary in place.
	chmod 755 "$tmp"
	rm -rf "$dir"
	mv "$tmp" "$dir"
	echo "$name $version: done in $((SECONDS - start))s"
}

fail() { # name log tmp
	rm -rf "$3"
	echo "testbin: building $1 failed; last lines of $2:" >&2
	tail -n 30 "$2" >&2
}

ensure_prometheus() {
	local name start
	if [[ ${STATE[prometheus]} == found && ${STATE[promtool]} == found ]]; then
		for name in prometheus promtool; do
			echo "$name: using ${WHERE[$name]}"
		done
		return 0
	fi
	if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
		die "prometheus and promtool not found: apt-get install prometheus (as root) or put them on PATH"
	fi
	echo "prometheus: installing Debian's package ..."
	start=$SECONDS
	{
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
		# We only want the binaries; the harness starts its own Prometheus.
		if command -v systemctl >/dev/null; then
			systemctl disable --now prometheus.service || true
		fi
	} >"$CACHE/logs/prometheus-apt.log" 2>&1 || die "apt-get install prometheus failed; see $CACHE/logs/prometheus-apt.log"
	echo "prometheus: done in $((SECONDS - start))s"
}

lane() { # names...: builds them one after another, stops at the first failure
	local name
	for name in "$@"; do
		ensure "$name" || return 1
	done
}

main() {
	local names=("$@") kube=() other=() name pid status=0
	command -v "$PYTHON" >/dev/null || die "needs python3 (or PYTHON=...) to run localkube/localkube/binaries.py"
	((${#names[@]})) || names=("${KUBE_NAMES[@]}" "${OTHER_NAMES[@]}" prometheus)
	mkdir -p "$CACHE/logs"
	# Two runs at once would build the same thing twice; the second waits.
	exec 9>"$CACHE/.lock"
	flock 9
	for name in "${names[@]}"; do
		case $name in
		kube-apiserver | kube-controller-manager | kube-scheduler | kubectl) kube+=("$name") ;;
		etcd | helm | minio | kwok | kueue | scheduler-plugins) other+=("$name") ;;
		prometheus | promtool) ;;
		*) die "unknown binary $name; known: ${KUBE_NAMES[*]} ${OTHER_NAMES[*]} prometheus" ;;
		esac
	done
	# One lookup for all of them: STATE is cached|found|missing, WHERE the
	# binary's path or, when missing, the directory to build it into.
	while read -r name state where; do
		STATE[$name]=$state
		WHERE[$name]=$where
	done < <(binaries_py plan "${kube[@]}" "${other[@]}" prometheus promtool)
	[[ -n ${STATE[prometheus]:-} ]] || die "localkube/localkube/binaries.py plan failed"
	if [[ " ${names[*]} " == *" prometheus "* || " ${names[*]} " == *" promtool "* ]]; then
		ensure_prometheus
	fi
	# Go keeps both cores busy while compiling; a second lane fills the gaps
	# (module loading, the single-threaded link of the large binaries).
	# Lanes run as background jobs even when there is one, so that errexit
	# stays in force inside them.
	local pids=()
	if ((JOBS > 1)); then
		lane "${kube[@]}" &
		pids+=($!)
		lane "${other[@]}" &
		pids+=($!)
	else
		lane "${kube[@]}" "${other[@]}" &
		pids+=($!)
	fi
	for pid in "${pids[@]}"; do
		wait "$pid" || status=1
	done
	((status == 0)) || die "some builds failed (logs in $CACHE/logs)"
	binaries_py env >"$CACHE/current.env"
	echo "env: $CACHE/current.env"
}

# Same line: bash reads scripts lazily; an edit while running must not run more.
main "$@"; exit
