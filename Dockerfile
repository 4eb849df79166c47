# POLO Easy on a CUDA GPU: `docker compose run --rm train`, then `docker compose up serve`.
# requirements/gpu.txt is the pinned GPU stack (Unsloth, bitsandbytes, transformers, TRL, PEFT);
# pip resolves a CUDA torch for it within Unsloth's bound. serve adds FastAPI/uvicorn/Gradio. The devel image: Unsloth's Triton kernels compile at first use.
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # local model conversions, Unsloth's compiled cache and the GGUF converter live in the image,
    # outputs/ (runs) is a volume
    POLO_MODEL_CACHE=/opt/polo-cache \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
# Dependencies first (cached layer), then the code.
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY polo_lib ./polo_lib
RUN pip install --upgrade "pip>=25" && pip install -r requirements/gpu.txt -e ".[serve]"
COPY . .
# GGUF export's converter (llama-cpp-python sdist from PyPI, nothing compiled) and a kernel for papermill.
RUN polo install-converter \
    && python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (polo)"

EXPOSE 8000 7860
CMD ["polo", "serve", "latest", "--host", "0.0.0.0", "--port", "8000"]
