# vramgate with llama-server built in (llama.cpp from llama-cpp-python's sdist, MIT).
#
#   CPU:  docker build -t vramgate .
#   CUDA: docker build -t vramgate:cuda \
#           --build-arg BUILD_BASE=nvidia/cuda:12.6.3-devel-ubuntu24.04 \
#           --build-arg RUN_BASE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 \
#           --build-arg LLAMA_CUDA=on .
#   run:  docker run --gpus all -p 8080:8080 -v $PWD/models:/models \
#           -v $PWD/vramgate.yaml:/etc/vramgate/config.yaml:ro vramgate
# vLLM and SGLang are not in the image (each wants its own PyTorch); mount or derive for them.
ARG BUILD_BASE=python:3.11-slim-bookworm
ARG RUN_BASE=python:3.11-slim-bookworm

FROM ${BUILD_BASE} AS build
ARG LLAMA_CUDA=off
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential cmake python3 python3-venv python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY scripts/build-llama-server.sh scripts/
# Portable CPU code (AVX2, x86-64 from 2013 on) instead of the build machine's own.
RUN VRAMGATE_CACHE=/opt/llama VRAMGATE_LLAMA_CUDA=${LLAMA_CUDA} \
    VRAMGATE_LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    ./scripts/build-llama-server.sh && cp /opt/llama/llama.cpp-*/bin/llama-server /opt/llama-server
COPY pyproject.toml README.md ./
COPY src ./src
RUN python3 -m venv /opt/vramgate && /opt/vramgate/bin/pip install --no-cache-dir .

FROM ${RUN_BASE}
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 python3 python3-venv \
      && rm -rf /var/lib/apt/lists/* \
      && useradd --system --home /var/lib/vramgate --create-home vramgate \
      && mkdir -p /models /etc/vramgate && chown vramgate /models
COPY --from=build /opt/vramgate /opt/vramgate
COPY --from=build /opt/llama-server /usr/local/bin/llama-server
ENV PATH=/opt/vramgate/bin:$PATH \
    VRAMGATE_HOST=0.0.0.0 \
    VRAMGATE_STATE_DIR=/var/lib/vramgate \
    VRAMGATE_MODELS_DIR=/models \
    VRAMGATE_ENGINES__LLAMACPP__BINARY=/usr/local/bin/llama-server
USER vramgate
EXPOSE 8080
VOLUME ["/var/lib/vramgate", "/models"]
# SIGTERM: in-flight requests get drain_timeout, then every engine is stopped.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health')"
ENTRYPOINT ["vramgate", "serve"]
CMD ["--config", "/etc/vramgate/config.yaml"]
