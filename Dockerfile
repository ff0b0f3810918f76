# sparsescope dashboard, CPU-only PyTorch.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SPARSESCOPE_HOST=0.0.0.0 \
    SPARSESCOPE_PORT=8000 \
    SPARSESCOPE_DATA_DIR=/data

WORKDIR /app
# CPU wheel first: an unpinned torch from PyPI would pull a multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.2"
COPY pyproject.toml README.md ./
COPY dst_core ./dst_core
COPY backend ./backend
COPY frontend ./frontend
RUN pip install -e . \
    && useradd --system --create-home --uid 10001 sparsescope \
    && mkdir -p /data && chown sparsescope /data

# Training runs arbitrary configs: never as root.
USER sparsescope
VOLUME ["/data"]
EXPOSE 8000
# SIGTERM: the server stops its workers (3 s grace), marks their runs stopped and exits.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/api/health', timeout=4).status != 200)"
# Binds 0.0.0.0 (above), so without SPARSESCOPE_TOKEN the server refuses to start.
CMD ["python", "-m", "backend"]
