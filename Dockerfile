# One small image for the three commands: kube2sky, skydns and healthz.
#
#   docker build -t kube-skydns:latest .
#   kind load docker-image kube-skydns:latest
#
# etcd is not in this image: the pod (manifests/) and docker-compose.yml run the official
# etcd image next to it.
#
# Port 53 without root: the image runs as an unprivileged user (10001). Binding a port below
# 1024 needs CAP_NET_BIND_SERVICE, and a non-root process only gets it from a file capability
# on the program it executes. The capability is set on a private COPY of the interpreter,
# /usr/local/bin/python-netbind, which only the skydns command uses (its script's #! line
# points there). Setting it on the shared python binary would be fragile: a binary whose file
# capability is not in the container's bounding set fails to start at all (EPERM), so every
# kube2sky or healthz container that drops ALL capabilities would break, and so would every
# `python` run in the image. The skydns container in the manifests adds NET_BIND_SERVICE and
# drops everything else, with allowPrivilegeEscalation: false (the file capability still
# works there: the capability is in the permitted set the runtime gives the process).
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package needs; dependency versions are pinned in setup.cfg.
COPY setup.cfg setup.py pyproject.toml README.md ./
COPY skydns ./skydns
COPY kube2sky ./kube2sky
COPY healthz ./healthz

# libcap2-bin (setcap) and the C compiler for skydns._hits (skydns/_hits.c, the compiled loop of
# cached UDP hits) live only inside this layer, so they are not version-pinned: a pinned Debian
# revision would break the build at each point release for no gain. The image must have the
# compiled loop: the build fails when it did not build.
# hadolint ignore=DL3008
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends libcap2-bin gcc libc6-dev; \
    python -m pip install --no-compile . ; \
    python -c 'import skydns._hits' ; \
    python -m compileall -q /usr/local/lib/python3.11/site-packages ; \
    cp "$(readlink -f /usr/local/bin/python3.11)" /usr/local/bin/python-netbind; \
    setcap cap_net_bind_service=+ep /usr/local/bin/python-netbind; \
    sed -i '1s|^#!.*|#!/usr/local/bin/python-netbind|' /usr/local/bin/skydns; \
    apt-get purge -y --auto-remove libcap2-bin gcc libc6-dev; \
    rm -rf /var/lib/apt/lists/* /src; \
    groupadd --system --gid 10001 skydns; \
    useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin skydns

WORKDIR /
USER 10001:10001

EXPOSE 53/udp 53/tcp 9153/tcp 8080/tcp 8081/tcp
CMD ["skydns", "--help"]
