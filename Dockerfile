# imstack: one image for every service (`imstack serve <service>`).
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

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
