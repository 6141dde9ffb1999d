# `snakemake --cores 2 ablation`: every GAN variant of config `ablation.variants`, trained with each
# seed of `ablation.seeds` against the main run's C and oracle, on every dataset of the run. Each
# training runs the same `medxgan` steps as the main run, with the variant's settings, under
# results/{dataset}/ablation/{variant}/seed{seed}/. Not part of the default target.

VARIANTS = list(config["ablation"]["variants"])
ABLATION_SEEDS = config["ablation"]["seeds"]
ABLATION_METHODS = config["ablation"]["methods"]
VARIANT_DIR = "results/{dataset}/ablation/{variant}/seed{seed}"


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
    log:
        f"{VARIANT_DIR}/logs/train_gan.log",
    benchmark:
        f"{VARIANT_DIR}/benchmarks/train_gan.tsv"
    conda:
        "../envs/medxgan.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        settings=variant_params(*GAN_SECTIONS),
    shell:
        "medxgan train-gan --settings {params.settings:q} --manifest {input.manifest:q}"
        " --classifier {input.classifier:q}"
        " --out-dir results/{wildcards.dataset:q}/ablation/{wildcards.variant:q}/seed{wildcards.seed}/gan"
        " --threads {threads} 2> {log:q}"


rule ablation_train_encoder:
    input:
        manifest=manifest_of,
        generator=variant_generator,
    output:
        model=f"{VARIANT_DIR}/encoder/model.safetensors",
    log:
        f"{VARIANT_DIR}/logs/train_encoder.log",
    benchmark:
        f"{VARIANT_DIR}/benchmarks/train_encoder.tsv"
    conda:
        "../envs/medxgan.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    params:
        settings=variant_params("data", "encoder"),
    shell:
        "medxgan train-encoder --settings {params.settings:q} --manifest {input.manifest:q}"
        " --generator {input.generator:q}"
        " --out-dir results/{wildcards.dataset:q}/ablation/{wildcards.variant:q}/seed{wildcards.seed}/encoder"
        " --threads {threads} 2> {log:q}"


rule ablation_invert:
    input:
        manifest=manifest_of,
        classifier=rules.train_classifier.output.model,
        generator=variant_generator,
        encoder=variant_encoder,
    output:
        latents=f"{VARIANT_DIR}/inversion/latents.safetensors",
    log:
        f"{VARIANT_DIR}/logs/invert.log",
    benchmark:
        f"{VARIANT_DIR}/benchmarks/invert.tsv"
    conda:
        "../envs/medxgan.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    params:
        settings=variant_params("data", "inversion", "precision"),
        encoder=encoder_option,
    shell:
        "medxgan invert --settings {params.settings:q} --manifest {input.manifest:q} --classifier {input.classifier:q}"
        " --generator {input.generator:q} {params.encoder}"
        " --out-dir results/{wildcards.dataset:q}/ablation/{wildcards.variant:q}/seed{wildcards.seed}/inversion"
        " --threads {threads} 2> {log:q}"


rule ablation_explain:
    input:
        manifest=manifest_of,
        classifier=rules.train_classifier.output.model,
        generator=variant_generator,
        latents=rules.ablation_invert.output.latents,
    output:
        heatmaps=f"{VARIANT_DIR}/explanations/heatmaps.safetensors",
    log:
        f"{VARIANT_DIR}/logs/explain.log",
    benchmark:
        f"{VARIANT_DIR}/benchmarks/explain.tsv"
    conda:
        "../envs/medxgan.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    params:
        settings=variant_params("data", "explain"),
        methods=ABLATION_METHODS,
    shell:
        "medxgan explain --settings {params.settings:q} --manifest {input.manifest:q} --classifier {input.classifier:q}"
        " --generator {input.generator:q} --inversion {input.latents:q} --method {params.methods:q}"
        " --out {output.heatmaps:q} --threads {threads} 2> {log:q}"


rule ablation_evaluate:
    input:
        manifest=manifest_of,
        classifier=rules.train_classifier.output.model,
        oracle=rules.train_oracle.output.model,
        latents=rules.ablation_invert.output.latents,
        explanations=rules.ablation_explain.output.heatmaps,
    output:
        summary=f"{VARIANT_DIR}/metrics.csv",
    log:
        f"{VARIANT_DIR}/logs/evaluate.log",
    benchmark:
        f"{VARIANT_DIR}/benchmarks/evaluate.tsv"
    conda:
        "../envs/medxgan.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        settings=variant_params("data", "evaluate"),
    shell:
        "medxgan evaluate --settings {params.settings:q} --manifest {input.manifest:q} --classifier {input.classifier:q}"
        " --inversion {input.latents:q} --explanations {input.explanations:q} --oracle {input.oracle:q}"
        " --out-dir results/{wildcards.dataset:q}/ablation/{wildcards.variant:q}/seed{wildcards.seed}"
        " --threads {threads} 2> {log:q}"


rule ablation_table:
    input:
        variants=expand(f"{VARIANT_DIR}/metrics.csv", dataset=DATASETS, variant=VARIANTS, seed=ABLATION_SEEDS),
        main=expand("results/{dataset}/metrics.csv", dataset=DATASETS),
    output:
        table="results/ablation.csv",
        markdown="results/ablation.md",
        figure=report(
            "results/ablation.png",
            caption="../report/ablation.rst",
            category="ablation",
            labels={"figure": "GAN variants"},
        ),
    log:
        "results/logs/ablation_table.log",
    localrule: True
    conda:
        "../envs/medxgan.yaml"
    params:
        datasets=DATASETS,
        variants=VARIANTS,
        seeds=ABLATION_SEEDS,
        main_seed=config["seed"],
    shell:
        "medxgan ablation-table --results results --datasets {params.datasets:q} --variants {params.variants:q}"
        " --seeds {params.seeds} --main-seed {params.main_seed} --out {output.table:q} 2> {log:q}"


rule ablation:
    input:
        rules.ablation_table.output,
