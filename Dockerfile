# syntax=docker/dockerfile:1
# Training image (CPU). The gateway image is added with the service (see CHANGELOG / issues).
#   docker build -t pulse-fm-train .
#   docker run --rm -v $PWD/stores:/app/stores pulse-fm-train prepare --synthetic 200 --out stores/syn200
FROM python:3.11-slim AS build
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY pulsefm ./pulsefm
COPY training ./training
COPY service ./service
# torch is pinned in pyproject. Pass PyTorch's CPU wheel index as TORCH_INDEX for a small image
# (docker build --build-arg TORCH_INDEX=<url> ...); empty = the default index (a CUDA build).
ARG TORCH_INDEX=""
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} torch==2.13.0 \
 && /opt/venv/bin/pip install '.[train]'

FROM python:3.11-slim AS train
RUN useradd --create-home --uid 10001 pulse
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /app
USER pulse
HEALTHCHECK NONE
ENTRYPOINT ["pulse-fm"]
CMD ["--help"]
