# model-registry on its embedded SQLite, data in the /data volume.
#
# The build stage makes the two wheels (the server and the light client it pins,
# which is on no package index); the image installs them, not the source tree.
# deploy/install-wheels.sh holds both commands; tests/test_packaging.py runs them
# the same way on the files this stage copies.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY alembic ./alembic
COPY api ./api
COPY registry ./registry
COPY storage ./storage
COPY clients/python ./clients/python
COPY deploy/install-wheels.sh ./deploy/
RUN sh deploy/install-wheels.sh build python /wheels

FROM python:3.12-slim
COPY --from=build /wheels /wheels
COPY deploy/install-wheels.sh /wheels/
RUN PIP_NO_CACHE_DIR=1 sh /wheels/install-wheels.sh server python /wheels \
    && rm -r /wheels \
    && useradd --system --uid 10001 registry \
    && mkdir /data && chown registry /data

USER registry
ENV REGISTRY_HOST=0.0.0.0 \
    REGISTRY_PORT=8000 \
    REGISTRY_STORAGE=sqlite+aiosqlite:////data/registry.db
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]
CMD ["model-registry", "serve"]
