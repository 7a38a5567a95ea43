# bidsdeface as a BIDS App container.
#
#   docker build -t bidsdeface/bidsdeface:0.1.0 .
#   docker run --rm --user "$(id -u):$(id -g)" -v /data/ds:/data:ro -v /data/out:/out \
#       bidsdeface/bidsdeface:0.1.0 /data /out participant
#   apptainer run --cleanenv -B /data/ds:/data:ro -B /data/out:/out docker://bidsdeface/bidsdeface:0.1.0 \
#       /data /out participant
#
# The project is installed as the README installs it, with the versions pinned in
# constraints.txt (the file CI installs from). Templates are inside the package, so the
# image needs no network at run time. tests/test_container.py checks this recipe
# against the package and runs its install steps in a fresh venv.
FROM python:3.11.7-slim-bookworm

LABEL org.opencontainers.image.title="bidsdeface" \
      org.opencontainers.image.description="De-identify head MRI, CT and PET in BIDS datasets: deface, scrub metadata, QC, BIDS-valid derivatives" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/bidsdeface/bidsdeface" \
      org.opencontainers.image.url="https://github.com/bidsdeface/bidsdeface" \
      org.opencontainers.image.documentation="https://github.com/bidsdeface/bidsdeface#readme" \
      org.opencontainers.image.vendor="bidsdeface developers"

ENV VIRTUAL_ENV=/opt/bidsdeface/venv \
    PATH=/opt/bidsdeface/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DENO_DIR=/tmp/bidsdeface-deno \
    MPLCONFIGDIR=/tmp/bidsdeface-matplotlib \
    XDG_CACHE_HOME=/tmp/bidsdeface-cache \
    BIDSDEFACE_CONTAINER_IMAGE=bidsdeface/bidsdeface:0.1.0

WORKDIR /opt/bidsdeface/src
COPY constraints.txt pyproject.toml README.md LICENSE ./
COPY bidsdeface ./bidsdeface
COPY templates ./templates
COPY models ./models
COPY examples ./examples

RUN python -m venv "$VIRTUAL_ENV" \
 && pip install -c constraints.txt . \
 && bidsdeface --version > /version \
 && bidsdeface --help > /dev/null

RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin bidsdeface
USER bidsdeface
WORKDIR /home/bidsdeface

ENTRYPOINT ["bidsdeface"]
CMD ["--help"]
