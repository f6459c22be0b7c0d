# syntax=docker/dockerfile:1
# The one image of every cvm service in docker-compose.yml: `cvm topics`, `cvm worker`, `cvm sink`, `cvm simulate`.
# Configuration comes from CVM_* environment variables (cvm/config.py); the compose file sets them.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CVM_DATA_DIR=/data

WORKDIR /src

# The pinned dependencies first, in their own layer: they are large (chDB alone is ~550 MB) and change far less
# often than the code, so editing a .py file does not download them again.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the project itself (a regular, non-editable install: the source tree is not needed at run time).
COPY . .
RUN pip install --no-deps . \
    && cvm --help > /dev/null \
    && rm -rf /src

# Workers keep their RocksDB tables under /data; each container gets its own volume (see docker-compose.yml).
RUN useradd --system --uid 10001 --home-dir /data cvm \
    && mkdir -p /data \
    && chown cvm:cvm /data
USER cvm
WORKDIR /data
VOLUME ["/data"]

EXPOSE 8080
CMD ["cvm", "--help"]
