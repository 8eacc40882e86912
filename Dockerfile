# One image for both halves of a Dataflow flex template job: the launcher that
# builds the pipeline, and the SDK harness that runs it on the workers
# (https://cloud.google.com/dataflow/docs/guides/build-container-image).
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/imagescore:latest .
#   gcloud dataflow flex-template build gs://BUCKET/templates/backfill.json \
#     --image REGION-docker.pkg.dev/PROJECT/REPO/imagescore:latest \
#     --sdk-language PYTHON --metadata-file templates/backfill.json
#
# One image per job: --build-arg JOB=collect (or embed) with --metadata-file templates/JOB.json.
# The streaming job: --build-arg JOB=streaming with --metadata-file templates/streaming.json; run it with
# --enable_streaming_engine (see the README and docs/streaming.md).
# For GPU workers build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
# and run the job with --dataflow_service_options="worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver".
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:latest AS launcher

FROM apache/beam_python3.11_sdk:2.77.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG JOB=backfill
COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher

WORKDIR /template
COPY setup.py constraints.txt imagescore.py ./
COPY pipelines ./pipelines
COPY transforms ./transforms
COPY es ./es
COPY scoring ./scoring
COPY training ./training
COPY labeling ./labeling
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" torch==2.13.0 \
 && pip install --no-cache-dir -c constraints.txt .

# glibc: blocks up to 32 MiB from the heap rather than mmap, and up to 128 MiB of freed heap kept, so the
# scorer's per-batch planes are not faulted back in every batch (docs/decoding-and-baseline.md#speed).
ENV MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=134217728

# The launcher runs this module to construct the job; the workers already have the package.
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/pipelines/${JOB}.py
ENV PYTHONPATH=/template
ENTRYPOINT ["/opt/apache/beam/boot"]
