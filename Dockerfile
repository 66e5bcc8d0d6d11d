# model-registry on its embedded SQLite, data in the /data volume.
FROM python:3.12-slim

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY api ./api
COPY registry ./registry
COPY storage ./storage
# Editable, so that the migrations in alembic/ stay beside the storage package.
RUN pip install --no-cache-dir -e . \
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
