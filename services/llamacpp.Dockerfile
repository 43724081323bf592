# The two images that carry llama.cpp, forgeline/converter and forgeline/gateway: the targets
# `converter` and `gateway` of this one Dockerfile. Build from the repository root (the context
# needs proto/, kit/, clients/registry/ (the registry client), requirements/ and the services):
#
#   docker build -f services/llamacpp.Dockerfile --target converter -t forgeline/converter .
#   docker build -f services/llamacpp.Dockerfile --target gateway -t forgeline/gateway .
#
# Without --target, the last stage (the gateway) is built.
#
# Why one file with two targets: both images carry the same llama.cpp build (~10 minutes). As
# the one `toolchain` stage here, BuildKit compiles it for whichever target is built first and
# takes it from its cache for the other, in any order and with nothing to build beforehand. A
# toolchain base image of its own would have to be built before the two service images (compose's
# additional_contexts, `docker build --build-context`, which the smoke run's docker 20.10 CLI
# lacks); two copies of the stage, as before, had to be kept identical by hand.
#
# Build arguments:
#   BASE_IMAGE  a Debian bookworm image with Python 3.11 and python3-venv (default: the official
#               slim Python image; offline hosts pass a locally made stand-in).
# Build secret (optional): extra_ca, a PEM bundle trusted while pip downloads (a proxy's CA);
#   used in build stages only, never written into a layer.
ARG BASE_IMAGE=python:3.11.11-slim-bookworm

# --- The llama.cpp toolchain stage: /opt/llama.cpp, which both images copy.
# It copies only the kit's llama.cpp module (and installs only what that imports), so the
# ~10-minute compile is redone when the pin or the build recipe changes, not on any kit edit.
FROM ${BASE_IMAGE} AS toolchain
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 \
    FORGELINE_CACHE_DIR=/opt/forgeline-cache PYTHONPATH=/src/kit
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake g++ make \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
COPY deploy/docker/with-extra-ca.sh /usr/local/bin/with-extra-ca
COPY deploy/docker/pip-install.sh /usr/local/bin/pip-install
COPY requirements/lock.txt /src/requirements/lock.txt
RUN --mount=type=secret,id=extra_ca pip-install pydantic httpx
COPY kit/src/forgeline_kit/__init__.py /src/kit/forgeline_kit/__init__.py
COPY kit/src/forgeline_kit/llamacpp /src/kit/forgeline_kit/llamacpp
# The pinned llama.cpp source is llama-cpp-python's sdist, put where the kit looks for it (the
# kit checks its sha256). Fetched here with only that package held to source: pip would build
# every build dependency from source too under the kit's `--no-binary :all:`.
RUN --mount=type=secret,id=extra_ca \
    version="$(/opt/venv/bin/python -c 'from forgeline_kit.llamacpp.toolchain import PIN; print(PIN.package_version)')" \
    && mkdir -p /opt/forgeline-cache/llama.cpp/downloads \
    && with-extra-ca /opt/venv/bin/pip download --no-cache-dir --no-deps \
       --no-binary llama-cpp-python --dest /opt/forgeline-cache/llama.cpp/downloads \
       "llama-cpp-python==$version"
# Built portable (no -march=native: the image runs on any x86-64 host), then moved to one fixed
# directory.
RUN home="$(/opt/venv/bin/python -m forgeline_kit.llamacpp build --portable)" \
    && cp -a "$home" /opt/llama.cpp \
    && rm -rf /opt/forgeline-cache

# --- Python packages: each image's third-party packages (torch and the like) in a stage of its
# own (`<image>-deps`) below Forgeline's sources, so a change to Forgeline's code rebuilds only
# the small layer of `<image>-build`, never the third-party venv. deploy/docker/install-packages.sh
# does both steps; `deps` holds what they start from.
FROM ${BASE_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
COPY deploy/docker/with-extra-ca.sh /usr/local/bin/with-extra-ca
COPY deploy/docker/pip-install.sh /usr/local/bin/pip-install
COPY deploy/docker/install-packages.sh /usr/local/bin/install-packages
COPY requirements/lock.txt /src/requirements/lock.txt
COPY deploy/docker/third-party-deps.py /usr/local/lib/forgeline/third-party-deps.py
COPY proto/pyproject.toml /src/proto/pyproject.toml
COPY kit/pyproject.toml /src/kit/pyproject.toml
COPY clients/registry/pyproject.toml /src/clients/registry/pyproject.toml

# The converter's include what llama.cpp's convert scripts import (torch, transformers), at the
# locked versions.
FROM deps AS converter-deps
COPY services/converter/pyproject.toml /src/services/converter/pyproject.toml
RUN --mount=type=secret,id=extra_ca install-packages third-party \
    /src/proto /src/kit /src/clients/registry /src/services/converter

FROM deps AS gateway-deps
COPY services/gateway/pyproject.toml /src/services/gateway/pyproject.toml
RUN --mount=type=secret,id=extra_ca install-packages third-party \
    /src/proto /src/kit /src/clients/registry /src/services/gateway

# Forgeline's own packages, installed under /staging rather than into the venv: the image copies
# the third-party venv and these packages as two layers, so a change to Forgeline's code adds a
# few megabytes to an image, not another copy of the venv.
FROM converter-deps AS converter-build
COPY proto /src/proto
COPY kit /src/kit
COPY clients/registry /src/clients/registry
COPY services/converter /src/services/converter
RUN --mount=type=secret,id=extra_ca install-packages own \
    /src/proto /src/kit /src/clients/registry /src/services/converter

FROM gateway-deps AS gateway-build
COPY proto /src/proto
COPY kit /src/kit
COPY clients/registry /src/clients/registry
COPY services/gateway /src/services/gateway
RUN --mount=type=secret,id=extra_ca install-packages own \
    /src/proto /src/kit /src/clients/registry /src/services/gateway

# --- What both images run on: llama.cpp (whose tools, the converter's quantize and the
# gateway's llama-server, link libgomp for their threads) and the service user.
FROM ${BASE_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 forgeline \
    && useradd --system --uid 10001 --gid forgeline --home-dir /var/lib/forgeline \
       --create-home --shell /usr/sbin/nologin forgeline
COPY --from=toolchain /opt/llama.cpp /opt/llama.cpp
COPY deploy/docker/healthcheck.py /usr/local/lib/forgeline/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FORGELINE_LLAMACPP_HOME=/opt/llama.cpp
USER forgeline:forgeline
WORKDIR /var/lib/forgeline
STOPSIGNAL SIGTERM

# --- The images. Each makes its state volume's mount point, owned by the service user (a new
# named volume copies it).
FROM runtime AS converter
LABEL org.opencontainers.image.title="forgeline-converter" \
      org.opencontainers.image.description="Forgeline converter: HF to GGUF, quantization (gRPC)"
COPY --from=converter-deps /opt/venv /opt/venv
COPY --from=converter-build /staging/opt/venv /opt/venv
ENV FORGELINE_CONVERTER_GRPC_HOST=0.0.0.0 \
    FORGELINE_CONVERTER_GRPC_PORT=50051 \
    FORGELINE_CONVERTER_METRICS_HOST=0.0.0.0 \
    FORGELINE_CONVERTER_METRICS_PORT=9464 \
    FORGELINE_CONVERTER_LOG_FORMAT=json
RUN mkdir -p /var/lib/forgeline/converter/work
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/venv/bin/python", "/usr/local/lib/forgeline/healthcheck.py", "grpc", "FORGELINE_CONVERTER"]
ENTRYPOINT ["python", "-m", "forgeline_converter"]

FROM runtime AS gateway
LABEL org.opencontainers.image.title="forgeline-gateway" \
      org.opencontainers.image.description="Forgeline OpenAI-compatible gateway (HTTP)"
COPY --from=gateway-deps /opt/venv /opt/venv
COPY --from=gateway-build /staging/opt/venv /opt/venv
ENV FORGELINE_GATEWAY_HTTP_HOST=0.0.0.0 \
    FORGELINE_GATEWAY_HTTP_PORT=8080 \
    FORGELINE_GATEWAY_METRICS_HOST=0.0.0.0 \
    FORGELINE_GATEWAY_METRICS_PORT=9464 \
    FORGELINE_GATEWAY_LOG_FORMAT=json \
    FORGELINE_GATEWAY_DATABASE_URL=sqlite:////var/lib/forgeline/gateway/gateway.sqlite3
RUN mkdir -p /var/lib/forgeline/gateway
EXPOSE 8080 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/opt/venv/bin/python", "/usr/local/lib/forgeline/healthcheck.py", "http", "FORGELINE_GATEWAY"]
ENTRYPOINT ["python", "-m", "forgeline_gateway"]
CMD ["serve"]
