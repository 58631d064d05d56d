#!/usr/bin/env bash
# Validate the compose file without a Docker engine.
#
#   compose/validate.sh [path/to/docker-compose.yml]
#
# Uses `docker compose` (v2 plugin) if it works, else `docker-compose`; if
# neither is present, installs Debian's `docker-compose` package with apt-get
# (needs root or sudo). Also checks that every host path it bind-mounts
# exists. Prints one line on success.
# Exit status: 0 valid, 1 invalid compose file, 2 no usable tool / bad usage.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
file="${1:-$here/../docker-compose.yml}"

if [[ ! -f $file ]]; then
    echo "validate.sh: no such file: $file" >&2
    exit 2
fi
file="$(cd "$(dirname "$file")" && pwd)/$(basename "$file")"

tool=()
pick_tool() {
    if docker compose version >/dev/null 2>&1; then
        tool=(docker compose)
    elif docker-compose version >/dev/null 2>&1; then
        tool=(docker-compose)
    else
        return 1
    fi
}

install_docker_compose() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "validate.sh: neither 'docker compose' nor 'docker-compose' works, and apt-get is unavailable" >&2
        exit 2
    fi
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "validate.sh: installing docker-compose needs root (or sudo)" >&2
            exit 2
        fi
    fi
    local log
    log="$(mktemp)"
    # --no-install-recommends: do not pull in the docker.io engine.
    if ! {
        ${sudo[@]+"${sudo[@]}"} apt-get update -qq &&
            ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq --no-install-recommends docker-compose
    } >"$log" 2>&1; then
        echo "validate.sh: apt-get install docker-compose failed:" >&2
        cat "$log" >&2
        rm -f "$log"
        exit 2
    fi
    rm -f "$log"
}

if ! pick_tool; then
    install_docker_compose
    if ! pick_tool; then
        echo "validate.sh: docker-compose was installed but does not run" >&2
        exit 2
    fi
fi

version="$("${tool[@]}" version --short 2>/dev/null || true)"

if ! out="$("${tool[@]}" -f "$file" config -q 2>&1)"; then
    echo "validate.sh: INVALID $file (checked with ${tool[*]} ${version}):" >&2
    printf '%s\n' "$out" >&2
    exit 1
fi

# A bind mount whose source is missing is not an error to compose: the engine
# creates an empty directory there, and Prometheus or Grafana then fail at
# start with a confusing message. Every host path mounted must exist.
# (Short form "- /path:/target:mode" from docker-compose v1, long form
# "source: /path" from docker compose v2; named volumes never start with /.)
missing=()
while IFS= read -r src; do
    [[ -e $src ]] || missing+=("$src")
done < <(printf '%s\n' "$("${tool[@]}" -f "$file" config 2>/dev/null)" |
    sed -n -E 's#^[[:space:]]*- (/[^:]+):.*#\1#p; s#^[[:space:]]*source: (/.*)$#\1#p')
if ((${#missing[@]})); then
    echo "validate.sh: INVALID $file: bind-mounted paths do not exist:" >&2
    printf '  %s\n' "${missing[@]}" >&2
    exit 1
fi

echo "compose file OK: $file (validated with ${tool[*]} ${version})"
