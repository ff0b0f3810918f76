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
RUN pip install -e .

VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/api/health', timeout=4).status != 200)"
CMD ["python", "-m", "backend"]
