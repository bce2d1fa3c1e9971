# The reference realm as a container image: FROM scratch, one static binary, no shell.
# Built by ci/build-images.sh, which prepares the build context (the binary and two empty
# directories); `docker build` needs no pull and no network.
FROM scratch

ARG VERSION=0.0.0
LABEL org.opencontainers.image.title="mtor-realm" \
      org.opencontainers.image.description="The MTOR/1 reference realm" \
      org.opencontainers.image.licenses="GPL-3.0-or-later" \
      org.opencontainers.image.version="${VERSION}" \
      org.mtor.cert.worker="worker --realm {realm} --token {enrol_token} --intents cert.probe --concurrency 2"

# Owned by the unprivileged user, so the realm can write its data (and SQLite its temp files).
COPY --chown=10001:10001 data/ /data/
COPY --chown=10001:10001 tmp/ /tmp/
COPY mtor-realm /mtor-realm

# Section 17 of docs/protocol.md: configuration comes only from MTOR_* variables. Listening on all
# interfaces is what a container needs; the harness publishes the port on 127.0.0.1 only.
ENV MTOR_LISTEN=0.0.0.0:7700 \
    MTOR_DATA_DIR=/data \
    TMPDIR=/tmp

USER 10001:10001
WORKDIR /data
EXPOSE 7700

# No shell or curl here: the binary probes its own /v1/health (exit 0 on 2xx).
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/mtor-realm", "health", "--timeout-ms", "2500"]

# The label org.mtor.cert.worker tells mtor-cert how to run a worker node from this image (the
# arguments after the entrypoint; the worker's identity comes in MTOR_WORKER_KEY), for the cases
# that pause or cut off a worker container.
ENTRYPOINT ["/mtor-realm"]
CMD ["up"]
