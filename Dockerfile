# The damflow image used by docker-compose.yml (workers, catalog sink, scanner). Not needed to run or test locally.
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
