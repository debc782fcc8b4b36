# One image for the gateway and the worker: `switchboard serve` (default) or `switchboard worker`.
# Built from the lock (requirements/app.txt: exact versions, hashes checked) on a base image
# pinned to an exact release; runs as an unprivileged user.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN python -m venv /opt/switchboard
# The lock first: its layer is rebuilt only when the lock changes.
COPY requirements/app.txt requirements/app.txt
RUN /opt/switchboard/bin/pip install --no-cache-dir --require-hashes -r requirements/app.txt
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY channels channels
COPY dispatch dispatch
COPY workers workers
COPY migrations migrations
# The project itself, resolving nothing more: everything it needs came from the lock.
RUN /opt/switchboard/bin/pip install --no-cache-dir --no-deps --no-build-isolation .

FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 switchboard
COPY --from=build /opt/switchboard /opt/switchboard
ENV PATH=/opt/switchboard/bin:$PATH \
    SWITCHBOARD_HOST=0.0.0.0 \
    SWITCHBOARD_PORT=8000 \
    PYTHONUNBUFFERED=1
USER switchboard
WORKDIR /home/switchboard
EXPOSE 8000
# The gateway's check; compose gives the worker its own (`switchboard worker --check`).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["switchboard", "serve", "--check"]
CMD ["switchboard", "serve"]
