#!/usr/bin/env bash
# Everything `make run` and `make test` need on a fresh Debian/Ubuntu machine:
# the etcd server and client, dig, python3-venv, a C compiler and Python headers (skydns._hits),
# the tools tests call (openssl, docker-compose),
# then a virtualenv in .venv with the project (its test extras bring pytest-timeout and hadolint).
# Idempotent: a second run only checks. Uses sudo when not root.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
command -v dig >/dev/null 2>&1 || need_apt+=(bind9-dnsutils)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)                # tests: TLS certificates
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)  # tests: `docker-compose config`
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)                    # tests: the pod in a network namespace
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then need_apt+=(python3-venv); fi
# skydns._hits (skydns/_hits.c) needs a C compiler, the C library's headers and Python's; without
# them the package still installs and answers with the Python loop.
if ! printf '#include <sys/socket.h>\nint main(void){return 0;}\n' | cc -x c -o /dev/null - >/dev/null 2>&1; then
    need_apt+=(gcc libc6-dev)
fi
if ! "$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
    need_apt+=(python3-dev)
fi
# Real clients of tests/integration/test_real_resolvers.py: network namespaces (iproute2),
# unbound and dnsmasq as node-local caches, busybox nslookup, musl's getaddrinfo (musl-gcc).
# (/usr/sbin is not on a plain user's PATH on Debian.)
new_unbound=""
have_sbin() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have_sbin ip || need_apt+=(iproute2)
have_sbin unbound || { need_apt+=(unbound); new_unbound=1; }
have_sbin dnsmasq || need_apt+=(dnsmasq-base)
command -v busybox >/dev/null 2>&1 || need_apt+=(busybox)
command -v musl-gcc >/dev/null 2>&1 || need_apt+=(musl-tools)
if [ ${#need_apt[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-deps: need ${need_apt[*]} but apt-get is not available; install them by hand" >&2
        exit 1
    fi
    echo "install-deps: apt-get install ${need_apt[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # The tests start their own unbound; the package's system service would hold port 53.
    if [ -n "$new_unbound" ] && [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now unbound >/dev/null 2>&1 || true
    fi
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install-deps: $PYTHON is $("$PYTHON" --version 2>&1); kube-skydns needs Python 3.11+" >&2
    exit 1
fi

stamp="$VENV/.installed"
if [ ! -x "$VENV/bin/python" ]; then
    echo "install-deps: creating the virtualenv $VENV ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
        || [ skydns/_hits.c -nt "$stamp" ]; then
    echo "install-deps: pip install -e '.[test]' into $VENV (the first time takes a minute or two)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || echo "install-deps: could not upgrade pip (continuing)"
    PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | { grep -v -e '^WARNING: Location' -e 'BuildBackendWarning' || true; }
    if ! "$VENV/bin/python" -c 'import skydns._hits' >/dev/null 2>&1; then
        echo "install-deps: skydns._hits did not build, so skydns answers cached hits with its Python loop" \
             "(pip install -v -e . shows why)" >&2
    fi
    touch "$stamp"
    echo "install-deps: done; the commands are in $VENV/bin (. $VENV/bin/activate puts them on PATH)"
fi
