# Sourced by scripts/demo and scripts/test: checks and installs what a fresh machine lacks.
# Idempotent; quiet when everything is in place; prints what it installs.
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install Rust >= 1.92 with rustup (https://rustup.rs)" >&2
    exit 1
fi

# ONNX Runtime for assimd-models' bundles (ort with load-dynamic): the shared library of the PyPI wheel
# onnxruntime==1.31.1, in a venv at $REPO/.venv. An ORT_DYLIB_PATH already set by the user wins.
_assimd_setup_ort() {
    local repo venv lib
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if [ -n "${ORT_DYLIB_PATH:-}" ]; then
        if [ ! -f "$ORT_DYLIB_PATH" ]; then
            echo "setup: ORT_DYLIB_PATH=$ORT_DYLIB_PATH does not exist; unset it to let setup install onnxruntime==1.31.1 in $repo/.venv" >&2
            return 1
        fi
        return 0
    fi
    venv="$repo/.venv"
    if [ ! -x "$venv/bin/python" ]; then
        if ! command -v python3 >/dev/null 2>&1; then
            echo "setup: python3 not found; it is needed to install the ONNX Runtime wheel (or set ORT_DYLIB_PATH)" >&2
            return 1
        fi
        echo "setup: creating a Python venv at $venv (for the onnxruntime wheel)"
        python3 -m venv "$venv" || { echo "setup: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; return 1; }
    fi
    if ! "$venv/bin/python" -c 'import onnxruntime, sys; sys.exit(onnxruntime.__version__ != "1.31.1")' >/dev/null 2>&1; then
        echo "setup: installing onnxruntime==1.31.1 into $venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'onnxruntime==1.31.1' \
            || { echo "setup: pip install onnxruntime==1.31.1 failed" >&2; return 1; }
    fi
    lib=""
    for f in "$venv"/lib/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1; do
        [ -f "$f" ] && lib="$f" && break
    done
    if [ -z "$lib" ]; then
        echo "setup: libonnxruntime.so.1.31.1 not found under $venv/lib/python3.*/site-packages/onnxruntime/capi" >&2
        return 1
    fi
    export ORT_DYLIB_PATH="$lib"
}
_assimd_setup_ort || exit 1
unset -f _assimd_setup_ort

# Mosquitto (Debian package) for the daemon's end-to-end tests, which start their own broker on a
# free port; nats-server for the clustered-broker tests and scripts/cluster; systemd-analyze for the
# unit's checks; openssl for the TLS test's certificates.
_assimd_setup_apt() {
    local missing=()
    [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
    command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)   # the TLS test makes its own CA
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo"
        else
            echo "setup: ${missing[*]} missing and not root (no passwordless sudo): apt-get install ${missing[*]}" >&2
            return 1
        fi
    fi
    echo "setup: installing ${missing[*]} (apt-get)"
    $sudo apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null \
        || { echo "setup: apt-get install ${missing[*]} failed" >&2; return 1; }
}
_assimd_setup_apt || exit 1
unset -f _assimd_setup_apt

# promtool (Prometheus's checker) for the monitoring tests (`promtool check metrics|rules|config`,
# `promtool test rules`): extracted from Debian's `prometheus` package into $REPO/.tools/bin rather
# than installing the package, which would also install and start a Prometheus server and pull in
# its web assets. A promtool already on the PATH is used as it is. Exports PROMTOOL.
_assimd_setup_promtool() {
    local repo tools tmp deb
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    tools="$repo/.tools/bin"
    if [ -x "$tools/promtool" ]; then
        export PROMTOOL="$tools/promtool"
        return 0
    fi
    if command -v promtool >/dev/null 2>&1; then
        export PROMTOOL="$(command -v promtool)"
        return 0
    fi
    echo "setup: extracting promtool from Debian's prometheus package into $tools"
    tmp="$(mktemp -d)"
    if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
        # A fresh machine may have no package lists yet.
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo -n"
        $sudo apt-get update -qq >/dev/null 2>&1
        (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) \
            || { echo "setup: apt-get download prometheus failed (needed for promtool)" >&2; rm -rf "$tmp"; return 1; }
    fi
    deb="$(ls "$tmp"/prometheus_*.deb)"
    dpkg-deb -x "$deb" "$tmp/x" && mkdir -p "$tools" && install -m 0755 "$tmp/x/usr/bin/promtool" "$tools/promtool" \
        || { echo "setup: extracting promtool from $deb failed" >&2; rm -rf "$tmp"; return 1; }
    rm -rf "$tmp"
    export PROMTOOL="$tools/promtool"
}
_assimd_setup_promtool || exit 1
unset -f _assimd_setup_promtool

# nats-server 2.14.4 or later for the clustered-broker tests and scripts/cluster. Older releases
# have MQTT and JetStream bugs the failure tests can run into: bookworm's 2.9.10 (installed above,
# for its dependencies and service files) leaves a restarted node out of some JetStream consumer
# groups for minutes; trixie's 2.10.27 can leave a push consumer inactive after a delivery over a
# route to a killed node failed (fixed in 2.10.28) and restarts the MQTT packet identifiers at 1
# whenever nothing is pending (monotonic from 2.14.4); docs/operations.md, "A clustered broker".
# The binary (Go) is extracted from Debian testing's (forky; else unstable's, sid) package into
# $REPO/.tools/bin, checked along Debian's chain of trust: the InRelease signature (gpgv,
# debian-archive-keyring), the Packages index's SHA-256 signed in it, the package's SHA-256 in that
# index. A nats-server 2.14.4 or later already on the PATH is used as it is. Exports
# ASSIMD_NATS_SERVER.
_assimd_setup_nats() {
    local repo tools suite
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    tools="$repo/.tools/bin"
    _assimd_nats_recent() {
        local v
        v="$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\.[0-9]*\.[0-9]*\).*/\1/p')"
        [ -n "$v" ] && [ "$(printf '%s\n2.14.4\n' "$v" | sort -V | head -1)" = "2.14.4" ]
    }
    if [ -x "$tools/nats-server" ] && _assimd_nats_recent "$tools/nats-server"; then
        export ASSIMD_NATS_SERVER="$tools/nats-server"; return 0
    fi
    if command -v nats-server >/dev/null 2>&1 && _assimd_nats_recent "$(command -v nats-server)"; then
        export ASSIMD_NATS_SERVER="$(command -v nats-server)"; return 0
    fi
    # Debian testing first; unstable (sid) if testing has dropped the package (testing
    # removes packages with release-critical bugs) or holds an older one.
    for suite in forky sid; do
        _assimd_nats_from "$suite" "$tools" && break
    done
    _assimd_nats_recent "$tools/nats-server" 2>/dev/null \
        || { echo "setup: no nats-server 2.14.4 or later in Debian forky or sid (see the lines above); install one on the PATH" >&2; return 1; }
    export ASSIMD_NATS_SERVER="$tools/nats-server"
}
# Extract nats-server from Debian suite $1's package into $2, checked along the chain of trust.
_assimd_nats_from() {
    local suite="$1" tools="$2" tmp mirror arch sum file
    echo "setup: extracting nats-server from Debian $suite's package into $tools"
    mirror="http://deb.debian.org/debian"
    arch="$(dpkg --print-architecture)"
    tmp="$(mktemp -d)"
    fail() { echo "setup: nats-server from $suite: $1" >&2; rm -rf "$tmp"; return 1; }
    curl -sfL --max-time 120 "$mirror/dists/$suite/InRelease" -o "$tmp/InRelease" || { fail "downloading the InRelease failed"; return 1; }
    gpgv --keyring /usr/share/keyrings/debian-archive-keyring.gpg --output "$tmp/Release" "$tmp/InRelease" 2>/dev/null \
        || { fail "the InRelease signature does not verify (debian-archive-keyring)"; return 1; }
    sum="$(awk -v f="main/binary-$arch/Packages.xz" '/^SHA256:/{s=1;next} /^[^ ]/{s=0} s && $3==f {print $1}' "$tmp/Release")"
    curl -sfL --max-time 300 "$mirror/dists/$suite/main/binary-$arch/Packages.xz" -o "$tmp/Packages.xz" \
        && echo "$sum  $tmp/Packages.xz" | sha256sum -c --quiet - \
        || { fail "the Packages index is missing or does not match its signed checksum"; return 1; }
    read -r file sum < <(xz -dc "$tmp/Packages.xz" | awk '/^Package: nats-server$/{p=1} p && /^Filename:/{f=$2} p && /^SHA256:/{s=$2} p && /^$/{print f, s; exit}')
    [ -n "$file" ] || { fail "no nats-server in the index"; return 1; }
    curl -sfL --max-time 300 "$mirror/$file" -o "$tmp/nats.deb" \
        && echo "$sum  $tmp/nats.deb" | sha256sum -c --quiet - \
        || { fail "$file is missing or does not match the index's checksum"; return 1; }
    dpkg-deb -x "$tmp/nats.deb" "$tmp/x" || { fail "extracting $file failed"; return 1; }
    _assimd_nats_recent "$tmp/x/usr/sbin/nats-server" || { fail "$file is older than 2.14.4"; return 1; }
    mkdir -p "$tools" && install -m 0755 "$tmp/x/usr/sbin/nats-server" "$tools/nats-server" \
        || { fail "installing $file into $tools failed"; return 1; }
    rm -rf "$tmp"
}
_assimd_setup_nats || exit 1
unset -f _assimd_setup_nats _assimd_nats_recent _assimd_nats_from
