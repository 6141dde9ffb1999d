# The image every rule can run in: `snakemake --sdm apptainer` (the Snakefile's `container:`, which
# Apptainer converts from this Docker image) and workflow/profiles/kubernetes (`container-image`).
# CPU-only PyTorch; for the GPU rules on a GPU node, install a CUDA build of torch instead.
#
#   docker build -t registry.example.org/medxgan:latest . && docker push registry.example.org/medxgan:latest
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# PyTorch first, from its CPU index, so that `pip install .` finds it installed and fetches no CUDA wheels.
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu

# The package, with Snakemake and the other dependencies of pyproject.toml: the `medxgan` command
# every rule calls.
COPY pyproject.toml README.md LICENSE /tmp/medxgan/
COPY src /tmp/medxgan/src
RUN pip install "/tmp/medxgan[workflow,data,template]" && rm -rf /tmp/medxgan

# No ENTRYPOINT: Snakemake runs each job as `apptainer exec IMAGE bash -c COMMAND` (bash is in the
# base image), and `docker run IMAGE snakemake ...` runs what it is given, in the mounted project.
WORKDIR /work
CMD ["bash"]
