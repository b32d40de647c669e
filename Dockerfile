# syntax=docker/dockerfile:1
# Two images from one file (multi-stage, slim, non-root):
#   docker build --target gateway -t pulse-fm-gateway .     # the HTTP gateway (no torch)
#   docker build --target train   -t pulse-fm-train .       # prepare / train / evaluate / publish
# torch is pinned in pyproject. Pass PyTorch's CPU wheel index as TORCH_INDEX for a small training
# image (docker build --build-arg TORCH_INDEX=<url> ...); empty = the default index (a CUDA build).

FROM python:3.11-slim AS base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY pulsefm ./pulsefm
COPY training ./training
COPY service ./service

FROM base AS gateway-build
RUN python -m venv /opt/venv && /opt/venv/bin/pip install -c constraints.txt '.[serve,triton]'

FROM base AS train-build
ARG TORCH_INDEX=""
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} torch==2.13.0 \
 && /opt/venv/bin/pip install -c constraints.txt '.[train,export]'

FROM python:3.11-slim AS gateway
RUN useradd --create-home --uid 10001 pulse
COPY --from=gateway-build /opt/venv /opt/venv
COPY --chown=pulse:pulse model_repository /app/model_repository
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PULSEFM_REPO=/app/model_repository
WORKDIR /app
USER pulse
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["pulse-fm", "serve", "--host", "0.0.0.0", "--port", "8080"]

FROM python:3.11-slim AS train
RUN useradd --create-home --uid 10001 pulse
COPY --from=train-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /app
USER pulse
HEALTHCHECK NONE
ENTRYPOINT ["pulse-fm"]
CMD ["--help"]
