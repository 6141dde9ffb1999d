# Inversion of the positive test images, then one job for every explanation method: they share the
# images, networks and inversion, which one job reads once.
#
# With `inversion.chunk_size` or `explain.chunk_size` set, that step runs as one job per chunk of
# the positive test images, and a gather job joins the chunks into
# exactly the files one job writes. The chunks are planned from the number of positive test
# images, which is known only once the data exist: the `count_test_positives` checkpoint.

# The helpers (SHARDED, one_of, unsharded, chunks_of) are in common.smk.


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
    log:
        "results/{dataset}/logs/invert.log",
    benchmark:
        "results/{dataset}/benchmarks/invert.tsv"
    wildcard_constraints:
        dataset=unsharded("inversion"),
    priority: ON_THE_LONG_PATH
    conda:
        "../envs/medxgan.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,  # minutes on one GPU, 5,000 steps through VGG16 for the paper's COVID sets
    params:
        settings=settings("data", "inversion", "precision"),
        encoder=encoder_option,
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
        heatmaps="results/{dataset}/explanations/heatmaps.safetensors",
    log:
        "results/{dataset}/logs/explain.log",
    benchmark:
        "results/{dataset}/benchmarks/explain.tsv"
    wildcard_constraints:
        dataset=unsharded("explain"),
    conda:
        "../envs/medxgan.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,  # minutes on one GPU, every method
    params:
        settings=settings("data", "explain"),
    shell:
        "medxgan explain --settings {params.settings:q} --manifest {input.manifest:q}"
        " --classifier {input.classifier:q} --generator {input.generator:q} --inversion {input.latents:q}"
        " --out {output.heatmaps:q} --threads {threads} 2> {log:q}"


# --- The same two steps in chunks ---


checkpoint count_test_positives:
    input:
        manifest=manifest_of,
    output:
        positives="results/{dataset}/test_positives.json",
    log:
        "results/{dataset}/logs/count_test_positives.log",
    benchmark:
        "results/{dataset}/benchmarks/count_test_positives.tsv"
    localrule: True
    conda:
        "../envs/medxgan.yaml"
    params:
        settings=settings("data"),
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
    log:
        "results/{dataset}/logs/invert_{start}-{stop}.log",
    benchmark:
        "results/{dataset}/benchmarks/invert_{start}-{stop}.tsv"
    wildcard_constraints:
        start=r"\d+",
        stop=r"\d+",
    priority: ON_THE_LONG_PATH
    conda:
        "../envs/medxgan.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,  # minutes on one GPU, one chunk
    params:
        settings=settings("data", "inversion", "precision"),
        encoder=encoder_option,
    shell:
        "medxgan invert --settings {params.settings:q} --manifest {input.manifest:q}"
        " --classifier {input.classifier:q} --generator {input.generator:q} {params.encoder}"
        " --chunk {wildcards.start}:{wildcards.stop}"
        " --out-dir results/{wildcards.dataset:q}/inversion/chunks/{wildcards.start}-{wildcards.stop}"
        " --threads {threads} 2> {log:q}"


rule gather_inversion:
    input:
        latents=lambda w: expand(
            "results/{dataset}/inversion/chunks/{chunk}/latents.safetensors",
            dataset=w.dataset,
            chunk=chunks_of(w.dataset, "inversion"),
        ),
        tables=lambda w: expand(
            "results/{dataset}/inversion/chunks/{chunk}/{file}",
            file=["inversion.csv", "provenance.json"],
            dataset=w.dataset,
            chunk=chunks_of(w.dataset, "inversion"),
        ),
    output:
        latents="results/{dataset}/inversion/latents.safetensors",
        table="results/{dataset}/inversion/inversion.csv",
        provenance="results/{dataset}/inversion/provenance.json",
    log:
        "results/{dataset}/logs/gather_inversion.log",
    benchmark:
        "results/{dataset}/benchmarks/gather_inversion.tsv"
    wildcard_constraints:
        dataset=one_of(SHARDED["inversion"]),
    localrule: True
    conda:
        "../envs/medxgan.yaml"
    params:
        chunks=lambda w, input: [os.path.dirname(path) for path in input.latents],
    shell:
        "medxgan gather-inversion --chunks {params.chunks:q} --out-dir results/{wildcards.dataset:q}/inversion 2> {log:q}"


rule explain_chunk:
    input:
        manifest=manifest_of,
        classifier=rules.train_classifier.output.model,
        generator=rules.train_gan.output.generator,
        latents=rules.invert.output.latents,
    output:
        heatmaps=temp("results/{dataset}/explanations/chunks/{start}-{stop}.safetensors"),
    log:
        "results/{dataset}/logs/explain_{start}-{stop}.log",
    benchmark:
        "results/{dataset}/benchmarks/explain_{start}-{stop}.tsv"
    wildcard_constraints:
        start=r"\d+",
        stop=r"\d+",
    conda:
        "../envs/medxgan.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,  # minutes on one GPU, one chunk, every method
    params:
        settings=settings("data", "explain"),
    shell:
        "medxgan explain --settings {params.settings:q} --manifest {input.manifest:q}"
        " --classifier {input.classifier:q} --generator {input.generator:q} --inversion {input.latents:q}"
        " --chunk {wildcards.start}:{wildcards.stop} --out {output.heatmaps:q}"
        " --threads {threads} 2> {log:q}"


rule gather_explanations:
    input:
        chunks=lambda w: expand(
            "results/{dataset}/explanations/chunks/{chunk}.safetensors",
            dataset=w.dataset,
            chunk=chunks_of(w.dataset, "explain"),
        ),
    output:
        heatmaps="results/{dataset}/explanations/heatmaps.safetensors",
    log:
        "results/{dataset}/logs/gather_explanations.log",
    benchmark:
        "results/{dataset}/benchmarks/gather_explanations.tsv"
    wildcard_constraints:
        dataset=one_of(SHARDED["explain"]),
    localrule: True
    conda:
        "../envs/medxgan.yaml"
    shell:
        "medxgan gather-explanations --chunks {input.chunks:q} --out {output.heatmaps:q} 2> {log:q}"
