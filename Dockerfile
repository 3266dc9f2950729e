# syntax=docker/dockerfile:1
# The trtllm-operator image: `docker build -t <registry>/trtllm-operator:<version> .`
# (build context: the repository root). The chart's image.repository/tag point at it.
#
# Only the operator runs here; build Jobs and trtllm-serve run NVIDIA's TensorRT-LLM release
# image, and the build entrypoint reaches them through a ConfigMap. So this image needs no CUDA.

ARG PYTHON_IMAGE=python:3.12-slim

# ---- build: install the package and its dependencies into a virtualenv ----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# What the package is built from (see .dockerignore): metadata, the package, and build-jobs/
# (operator/trtllm_jobs links the job entrypoint package from there).
COPY pyproject.toml README.md ./
COPY build-jobs/ build-jobs/
COPY operator/ operator/
# A regular (not editable) install: the virtualenv is self-contained and copied as a whole.
RUN pip install . \
 && python -c "import trtllm_operator.handlers, trtllm_jobs.build" \
 && trtllm-operator --version

# ---- runtime: the virtualenv on a clean base, as a non-root user -----------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="trtllm-operator" \
      org.opencontainers.image.description="Kubernetes operator: TensorRT-LLM engines per GPU type, served with trtllm-serve" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin nonroot
# Same path as in the build stage: a virtualenv's scripts name their interpreter by path.
COPY --from=build /opt/venv /opt/venv
# The root filesystem is read-only in the pod (the chart mounts an emptyDir at /tmp):
# no .pyc writes, unbuffered logs.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
# Metrics, health (liveness at /healthz).
EXPOSE 8080 8081
ENTRYPOINT ["trtllm-operator", "run"]
