# `snakemake --cores 2 ablation`: every GAN variant of config `ablation.variants`, trained with each
# seed of `ablation.seeds` against the main run's C and oracle, on every dataset of the run. Each
# training runs the same `medxgan` steps as the main run, with the variant's settings, under
# results/{dataset}/ablation/{variant}/seed{seed}/. Not part of the default target.

import json

from medxgan.config import variant_settings

VARIANTS = list(config["ablation"]["variants"])
ABLATION_SEEDS = config["ablation"]["seeds"]
ABLATION_METHODS = config["ablation"]["methods"]
VARIANT_DIR = "results/{dataset}/ablation/{variant}/seed{seed}"
VARIANT_DIR_IN_SHELL = "results/{wildcards.dataset:q}/ablation/{wildcards.variant:q}/seed{wildcards.seed}"


def variant_params(*sections):
    return lambda w: variant_settings(config, w.dataset, w.variant, int(w.seed), *sections)


def variant_encoder(w):
    """The variant's encoder where its inversion starts from one (inversion.init: encoder)."""
    inversion = json.loads(variant_settings(config, w.dataset, w.variant, int(w.seed), "inversion"))["inversion"]
    return VARIANT_DIR.format(dataset=w.dataset, variant=w.variant, seed=w.seed) + "/encoder/model.safetensors" if inversion["init"] == "encoder" else []


wildcard_constraints:
    variant="|".join(map(re.escape, VARIANTS)),
    seed=r"\d+",


rule ablation_train_gan:
    input:
        manifest=manifest_of,
        classifier=rules.train_classifier.output.model,
    output:
        generator=f"{VARIANT_DIR}/gan/generator.safetensors",
        summary=f"{VARIANT_DIR}/gan/summary.json",
        losses=f"{VARIANT_DIR}/gan/losses.csv",
    params:
        settings=variant_params("data", "gan", "precision"),
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    benchmark:
        f"{VARIANT_DIR}/benchmarks/train_gan.tsv"
    log:
        f"{VARIANT_DIR}/logs/train_gan.log",
    shell:
        "medxgan train-gan --settings {params.settings:q} --manifest {input.manifest:q}"
        " --classifier {input.classifier:q} --out-dir " + VARIANT_DIR_IN_SHELL + "/gan --threads {threads} 2> {log:q}"


rule ablation_train_encoder:
    input:
        manifest=manifest_of,
        generator=rules.ablation_train_gan.output.generator,
    output:
        model=f"{VARIANT_DIR}/encoder/model.safetensors",
    params:
        settings=variant_params("data", "encoder"),
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    benchmark:
        f"{VARIANT_DIR}/benchmarks/train_encoder.tsv"
    log:
        f"{VARIANT_DIR}/logs/train_encoder.log",
    shell:
        "medxgan train-encoder --settings {params.settings:q} --manifest {input.manifest:q}"
        " --generator {input.generator:q} --out-dir " + VARIANT_DIR_IN_SHELL + "/encoder --threads {threads} 2> {log:q}"


rule ablation_invert:
    input:
        manifest=manifest_of,
        classifier=rules.train_classifier.output.model,
        generator=rules.ablation_train_gan.output.generator,
        encoder=variant_encoder,
    output:
        latents=f"{VARIANT_DIR}/inversion/latents.safetensors",
    params:
        settings=variant_params("data", "inversion", "precision"),
        encoder=encoder_option,
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    benchmark:
        f"{VARIANT_DIR}/benchmarks/invert.tsv"
    log:
        f"{VARIANT_DIR}/logs/invert.log",
    shell:
        "medxgan invert --settings {params.settings:q} --manifest {input.manifest:q} --classifier {input.classifier:q}"
        " --generator {input.generator:q} {params.encoder} --out-dir " + VARIANT_DIR_IN_SHELL + "/inversion"
        " --threads {threads} 2> {log:q}"


rule ablation_explain:
    input:
        manifest=manifest_of,
        classifier=rules.train_classifier.output.model,
        generator=rules.ablation_train_gan.output.generator,
        latents=rules.ablation_invert.output.latents,
    output:
        heatmaps=f"{VARIANT_DIR}/explanations/{{method}}.safetensors",
    params:
        settings=variant_params("data", "explain"),
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    benchmark:
        f"{VARIANT_DIR}/benchmarks/explain_{{method}}.tsv"
    log:
        f"{VARIANT_DIR}/logs/explain_{{method}}.log",
    shell:
        "medxgan explain --settings {params.settings:q} --manifest {input.manifest:q} --classifier {input.classifier:q}"
        " --generator {input.generator:q} --inversion {input.latents:q} --method {wildcards.method}"
        " --out {output.heatmaps:q} --threads {threads} 2> {log:q}"


rule ablation_evaluate:
    input:
        manifest=manifest_of,
        classifier=rules.train_classifier.output.model,
        oracle=rules.train_oracle.output.model,
        latents=rules.ablation_invert.output.latents,
        explanations=expand(f"{VARIANT_DIR}/explanations/{{method}}.safetensors", method=ABLATION_METHODS,
                            allow_missing=True),
    output:
        summary=f"{VARIANT_DIR}/metrics.csv",
    params:
        settings=variant_params("data", "evaluate"),
    threads: JOB_THREADS
    resources:
        mem_mb=8000,
        runtime=60,
    benchmark:
        f"{VARIANT_DIR}/benchmarks/evaluate.tsv"
    log:
        f"{VARIANT_DIR}/logs/evaluate.log",
    shell:
        "medxgan evaluate --settings {params.settings:q} --manifest {input.manifest:q} --classifier {input.classifier:q}"
        " --inversion {input.latents:q} --explanations {input.explanations:q} --oracle {input.oracle:q}"
        " --out-dir " + VARIANT_DIR_IN_SHELL + " --threads {threads} 2> {log:q}"


rule ablation_table:
    input:
        variants=expand(f"{VARIANT_DIR}/metrics.csv", dataset=DATASETS, variant=VARIANTS, seed=ABLATION_SEEDS),
        main=expand("results/{dataset}/metrics.csv", dataset=DATASETS),
    output:
        table="results/ablation.csv",
        markdown="results/ablation.md",
        figure=report("results/ablation.png", caption="../report/ablation.rst", category="ablation",
                      labels={"figure": "GAN variants"}),
    params:
        datasets=DATASETS,
        variants=VARIANTS,
        seeds=ABLATION_SEEDS,
    localrule: True
    log:
        "results/logs/ablation_table.log",
    shell:
        "medxgan ablation-table --results results --datasets {params.datasets:q} --variants {params.variants:q}"
        " --seeds {params.seeds} --main-seed {config[seed]} --out {output.table:q} 2> {log:q}"


rule ablation:
    input:
        rules.ablation_table.output,
