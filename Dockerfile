# The openmodel operator image: python -m openmodel (kopf), non-root, no shell needed at
# run time. The install steps are hack/verify-image-steps.sh, which also runs them
# outside any container engine (`bash hack/verify-image-steps.sh`).
#
#   docker build -t openmodel/operator:0.1.0 .
#
# Pin the base by digest in CI: --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first: this layer is rebuilt only when a lock file changes.
COPY hack/verify-image-steps.sh hack/
COPY requirements.lock requirements-build.lock ./
COPY pyproject.toml ./
COPY operator/ operator/
RUN PYTHON=python3 bash hack/verify-image-steps.sh build-wheel /wheels \
 && PYTHON=python3 bash hack/verify-image-steps.sh install /opt/openmodel /wheels \
 && bash hack/verify-image-steps.sh check /opt/openmodel

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="openmodel" \
      org.opencontainers.image.description="Kubernetes operator that serves open-weight LLMs (vLLM, SGLang, llama.cpp or TGI) on your own GPUs" \
      org.opencontainers.image.version="${VERSION}"
# kopf names itself after the user (getpass.getuser()), which fails for a UID with no
# passwd entry: give 65532 one, and USER for any other UID a cluster may impose.
RUN echo 'openmodel:x:65532:65532:openmodel:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'openmodel:x:65532:' >> /etc/group
# The venv lives at the same path as in the build stage: its scripts and pyvenv.cfg
# name that path.
COPY --from=build /opt/openmodel /opt/openmodel
ENV PATH=/opt/openmodel/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    USER=openmodel \
    OPENMODEL_LIVENESS=http://0.0.0.0:8080/healthz \
    OPENMODEL_METRICS_PORT=9090
# Numeric, so Kubernetes can check runAsNonRoot without a passwd lookup.
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["python", "-m", "openmodel"]
