# One image for the webserver, the daemon, the code server and the runs it launches
# (docs/deploy.md). CPU by default; the CUDA build swaps the base and the torch wheel index:
#   docker build -t dermacurate .
#   docker build -t dermacurate:gpu \
#     --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

# Wheels matching the base: the CPU index keeps the CUDA libraries out of the CPU image.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The production embedder (DERMACURATE_EMBED_MODEL / _PRETRAINED), baked in at build time
# because runs are offline; an empty OPEN_CLIP_PRETRAINED skips it (weights mounted instead).
ARG OPEN_CLIP_MODEL=ViT-B-32
ARG OPEN_CLIP_PRETRAINED=laion2b_s34b_b79k

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/home \
    DERMACURATE_HOME=/var/lib/dermacurate \
    HF_HOME=/opt/hf

# The CUDA images have no Python (Ubuntu 24.04's is 3.12, within requires-python).
RUN if ! command -v python3 >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --system --create-home --uid 10001 dagster \
    && mkdir -p "$DAGSTER_HOME/storage" "$DERMACURATE_HOME" "$HF_HOME" \
    && chown dagster "$DAGSTER_HOME" "$DAGSTER_HOME/storage" "$DERMACURATE_HOME" "$HF_HOME"

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the index above; the pins in pyproject.toml accept its +cpu/+cuXXX builds.
RUN pip install --index-url "$TORCH_INDEX" torch==2.14.1 torchvision==0.29.1

WORKDIR /opt/dagster/app
COPY pyproject.toml ./
COPY dagster_project ./dagster_project
COPY assets ./assets
COPY resources ./resources
RUN pip install ".[deploy]"

USER dagster
RUN if [ -n "$OPEN_CLIP_PRETRAINED" ]; then \
        python -c "import open_clip, sys; open_clip.create_model(sys.argv[1], pretrained=sys.argv[2])" \
            "$OPEN_CLIP_MODEL" "$OPEN_CLIP_PRETRAINED"; \
    fi
# From here on nothing is downloaded: weights come from $HF_HOME or fail loudly.
ENV HF_HUB_OFFLINE=1

COPY deploy/dagster.yaml ${DAGSTER_HOME}/dagster.yaml
COPY deploy/workspace.yaml ./deploy/workspace.yaml

EXPOSE 3000 4000
CMD ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "deploy/workspace.yaml"]
