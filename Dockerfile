# imstack: one image for every service (`imstack serve <service>`).
# The build stage compiles the SIP edge's hot modules with mypyc (setup.py, IMSTACK_COMPILE=1):
# the same code, about a third fewer instructions per SIP request; the image needs no compiler.
FROM python:3.12-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY _build ./_build
COPY shared ./shared
COPY services ./services
# (_build/backend.py adds mypy and what it types the code with to the build requirements)
RUN IMSTACK_COMPILE=1 pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 IMSTACK_DATA_DIR=/var/lib/imstack
RUN useradd --system --create-home --home-dir /var/lib/imstack --uid 10001 imstack
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER imstack
WORKDIR /var/lib/imstack
EXPOSE 5060/udp 5060/tcp 5061/tcp 2855/tcp 8000/tcp
ENTRYPOINT ["imstack"]
CMD ["serve"]
