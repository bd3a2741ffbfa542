# One image for the webserver, the daemon and the runs.
#   docker build -t dermacurate .                                   (CPU)
#   docker build --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 -t dermacurate:gpu .
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 DAGSTER_HOME=/opt/dagster/home
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && apt-get update && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/dagster/app
COPY pyproject.toml README.md workspace.yaml ./
COPY dagster_project ./dagster_project
COPY assets ./assets
COPY resources ./resources
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install torch==2.14.1 torchvision==0.29.1 \
    && /opt/venv/bin/pip install .
ENV PATH=/opt/venv/bin:$PATH
COPY deploy/dagster.yaml ${DAGSTER_HOME}/dagster.yaml

EXPOSE 3000
CMD ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "workspace.yaml"]
