# One image for every role on Cloud Run: BRAINY_ROLE (ingest, search, indexer,
# compactor) picks the function functions-framework serves on $PORT.
#   docker build -t REGION-docker.pkg.dev/PROJECT/brainy/brainy:TAG .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8080 \
    BRAINY_CACHE_DIR=/tmp/brainy-cache

WORKDIR /app
# The same locked wheels as the Lambda package (annoy from annoy-mm's manylinux
# wheel: no compiler in the image, no -march=native binary).
COPY infra/aws/requirements-lambda.txt /app/requirements.txt
RUN pip install --no-cache-dir --no-deps --only-binary=:all: -r /app/requirements.txt

COPY pyproject.toml README.md /app/
COPY layers /app/layers
COPY functions /app/functions
RUN pip install --no-cache-dir --no-deps /app

RUN useradd --uid 10001 --no-create-home brainy
USER brainy

CMD ["sh", "-c", "case \"$BRAINY_ROLE\" in ingest|search|indexer|compactor) ;; *) echo \"BRAINY_ROLE: expected ingest, search, indexer or compactor, got '$BRAINY_ROLE'\" >&2; exit 2;; esac; exec functions-framework --source \"functions/$BRAINY_ROLE/main.py\" --target \"$BRAINY_ROLE\" --host 0.0.0.0 --port \"$PORT\""]
