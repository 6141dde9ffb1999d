# Inversion of the positive test images, then one job per explanation method.
#
# With `inversion.chunk_size` or `explain.chunk_size` set, that step runs as one job per chunk of
# the positive test images (per method, for explanations), and a gather job joins the chunks into
# exactly the files one job writes. The chunks are planned from the number of positive test
# images, which is known only once the data exist: the `count_test_positives` checkpoint.

import json
from pathlib import Path

from medxgan.shards import chunk_ranges, chunk_size

SHARDED = {section: [name for name in config["datasets"] if chunk_size(dataset_settings(config, name), section)]
           for section in ("inversion", "explain")}


def one_of(names):
    """A wildcard pattern for exactly these dataset names (one that matches nothing for none)."""
    return "|".join(map(re.escape, names)) or "(?!)"


def unsharded(section):
    return one_of([name for name in config["datasets"] if name not in SHARDED[section]])


def chunks_of(dataset, section):
    """'START-STOP' of each chunk of the dataset's positive test images, for `section`'s chunk size."""
    count = checkpoints.count_test_positives.get(dataset=dataset).output.positives
    total = json.loads(Path(count).read_text())["test_positives"]
    size = chunk_size(dataset_settings(config, dataset), section)
    return [f"{start}-{stop}" for start, stop in chunk_ranges(total, size)]


rule invert:
    input:
        manifest=manifest_of,
        classifier=rules.train_classifier.output.model,
        generator=rules.train_gan.output.generator,
        encoder=encoder_of,
    output:
        latents="results/{dataset}/inversion/latents.safetensors",
        table="results/{dataset}/inversion/inversion.csv",
        provenance="results/{dataset}/inversion/provenance.json",
    wildcard_constraints:
        dataset=unsharded("inversion"),
    params:
        settings=settings("data", "inversion", "precision"),
        encoder=encoder_option,
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,  # minutes on one GPU, 5,000 steps through VGG16 for the paper's COVID sets
    benchmark:
        "results/{dataset}/benchmarks/invert.tsv",
    log:
        "results/{dataset}/logs/invert.log",
    shell:
        "medxgan invert --settings {params.settings:q} --manifest {input.manifest:q}"
        " --classifier {input.classifier:q} --generator {input.generator:q} {params.encoder}"
        " --out-dir results/{wildcards.dataset:q}/inversion --threads {threads} 2> {log:q}"


rule explain:
    input:
        manifest=manifest_of,
        classifier=rules.train_classifier.output.model,
        generator=rules.train_gan.output.generator,
        latents=rules.invert.output.latents,
    output:
        heatmaps="results/{dataset}/explanations/{method}.safetensors",
    wildcard_constraints:
        dataset=unsharded("explain"),
    params:
        settings=settings("data", "explain"),
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,  # minutes on one GPU
    benchmark:
        "results/{dataset}/benchmarks/explain_{method}.tsv",
    log:
        "results/{dataset}/logs/explain_{method}.log",
    shell:
        "medxgan explain --settings {params.settings:q} --manifest {input.manifest:q}"
        " --classifier {input.classifier:q} --generator {input.generator:q} --inversion {input.latents:q}"
        " --method {wildcards.method} --out {output.heatmaps:q} --threads {threads} 2> {log:q}"


# --- The same two steps in chunks ---


checkpoint count_test_positives:
    input:
        manifest=manifest_of,
    output:
        positives="results/{dataset}/test_positives.json",
    params:
        settings=settings("data"),
    localrule: True
    benchmark:
        "results/{dataset}/benchmarks/count_test_positives.tsv",
    log:
        "results/{dataset}/logs/count_test_positives.log",
    shell:
        "medxgan count-test-positives --settings {params.settings:q} --manifest {input.manifest:q}"
        " --out {output.positives:q} 2> {log:q}"


rule invert_chunk:
    input:
        manifest=manifest_of,
        classifier=rules.train_classifier.output.model,
        generator=rules.train_gan.output.generator,
        encoder=encoder_of,
    output:
        # temporary: deleted once gathered; a chunk that failed is the only one a rerun redoes
        latents=temp("results/{dataset}/inversion/chunks/{start}-{stop}/latents.safetensors"),
        table=temp("results/{dataset}/inversion/chunks/{start}-{stop}/inversion.csv"),
        provenance=temp("results/{dataset}/inversion/chunks/{start}-{stop}/provenance.json"),
    wildcard_constraints:
        start=r"\d+",
        stop=r"\d+",
    params:
        settings=settings("data", "inversion", "precision"),
        encoder=encoder_option,
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,  # minutes on one GPU, one chunk
    benchmark:
        "results/{dataset}/benchmarks/invert_{start}-{stop}.tsv",
    log:
        "results/{dataset}/logs/invert_{start}-{stop}.log",
    shell:
        "medxgan invert --settings {params.settings:q} --manifest {input.manifest:q}"
        " --classifier {input.classifier:q} --generator {input.generator:q} {params.encoder}"
        " --chunk {wildcards.start}:{wildcards.stop}"
        " --out-dir results/{wildcards.dataset:q}/inversion/chunks/{wildcards.start}-{wildcards.stop}"
        " --threads {threads} 2> {log:q}"


rule gather_inversion:
    input:
        latents=lambda w: expand("results/{dataset}/inversion/chunks/{chunk}/latents.safetensors",
                                 dataset=w.dataset, chunk=chunks_of(w.dataset, "inversion")),
        tables=lambda w: expand("results/{dataset}/inversion/chunks/{chunk}/{file}", file=["inversion.csv", "provenance.json"],
                                dataset=w.dataset, chunk=chunks_of(w.dataset, "inversion")),
    output:
        latents="results/{dataset}/inversion/latents.safetensors",
        table="results/{dataset}/inversion/inversion.csv",
        provenance="results/{dataset}/inversion/provenance.json",
    wildcard_constraints:
        dataset=one_of(SHARDED["inversion"]),
    params:
        chunks=lambda w, input: [os.path.dirname(path) for path in input.latents],
    localrule: True
    benchmark:
        "results/{dataset}/benchmarks/gather_inversion.tsv",
    log:
        "results/{dataset}/logs/gather_inversion.log",
    shell:
        "medxgan gather-inversion --chunks {params.chunks:q} --out-dir results/{wildcards.dataset:q}/inversion 2> {log:q}"


rule explain_chunk:
    input:
        manifest=manifest_of,
        classifier=rules.train_classifier.output.model,
        generator=rules.train_gan.output.generator,
        latents=rules.invert.output.latents,
    output:
        heatmaps=temp("results/{dataset}/explanations/chunks/{method}/{start}-{stop}.safetensors"),
    wildcard_constraints:
        start=r"\d+",
        stop=r"\d+",
    params:
        settings=settings("data", "explain"),
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=30,  # minutes on one GPU, one chunk
    benchmark:
        "results/{dataset}/benchmarks/explain_{method}_{start}-{stop}.tsv",
    log:
        "results/{dataset}/logs/explain_{method}_{start}-{stop}.log",
    shell:
        "medxgan explain --settings {params.settings:q} --manifest {input.manifest:q}"
        " --classifier {input.classifier:q} --generator {input.generator:q} --inversion {input.latents:q}"
        " --method {wildcards.method} --chunk {wildcards.start}:{wildcards.stop} --out {output.heatmaps:q}"
        " --threads {threads} 2> {log:q}"


rule gather_explanations:
    input:
        chunks=lambda w: expand("results/{dataset}/explanations/chunks/{method}/{chunk}.safetensors",
                                dataset=w.dataset, method=w.method, chunk=chunks_of(w.dataset, "explain")),
    output:
        heatmaps="results/{dataset}/explanations/{method}.safetensors",
    wildcard_constraints:
        dataset=one_of(SHARDED["explain"]),
    localrule: True
    benchmark:
        "results/{dataset}/benchmarks/gather_explanations_{method}.tsv",
    log:
        "results/{dataset}/logs/gather_explanations_{method}.log",
    shell:
        "medxgan gather-explanations --chunks {input.chunks:q} --out {output.heatmaps:q} 2> {log:q}"
