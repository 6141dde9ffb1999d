# The classifier C, then medXGAN's generator and discriminator trained against the frozen C.


rule check_manifest:
    input:
        manifest=manifest_of,
        files=files_of_user_manifest,  # a replaced image, mask or healthy twin reruns the check and all that follows
    output:
        report="results/{dataset}/manifest_check.json",
    log:
        "results/{dataset}/logs/check_manifest.log",
    benchmark:
        "results/{dataset}/benchmarks/check_manifest.tsv"
    localrule: True
    conda:
        "../envs/medxgan.yaml"
    params:
        settings=check_settings,
    shell:
        "medxgan check-manifest --settings {params.settings:q} --manifest {input.manifest:q} --out {output.report:q}"
        " 2> {log:q}"


rule train_classifier:
    input:
        manifest=manifest_of,
        manifest_check=rules.check_manifest.output.report,  # no training on a manifest that fails the check
        # ImageNet weights to start from (classifier.weights), e.g. rule vgg16_weights' file
        weights=lambda w: dataset_settings(config, w.dataset)["classifier"]["weights"] or [],
        # the user's own classifier (classifier.pretrained), imported instead of trained
        pretrained=lambda w: dataset_settings(config, w.dataset)["classifier"]["pretrained"] or [],
    output:
        model="results/{dataset}/classifier/model.safetensors",
        metrics="results/{dataset}/classifier/metrics.json",
    log:
        "results/{dataset}/logs/train_classifier.log",
    benchmark:
        "results/{dataset}/benchmarks/train_classifier.tsv"
    priority: ON_THE_LONG_PATH
    conda:
        "../envs/medxgan.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,  # minutes, the paper's largest set on one GPU (docs/paper.md)
    params:
        settings=settings("data", "classifier"),
    shell:
        "medxgan train-classifier --settings {params.settings:q} --manifest {input.manifest:q}"
        " --out-dir results/{wildcards.dataset:q}/classifier --threads {threads} 2> {log:q}"


rule train_oracle:
    input:
        manifest=manifest_of,
        manifest_check=rules.check_manifest.output.report,
    output:
        model="results/{dataset}/oracle/model.safetensors",
        metrics="results/{dataset}/oracle/metrics.json",
    log:
        "results/{dataset}/logs/train_oracle.log",
    benchmark:
        "results/{dataset}/benchmarks/train_oracle.tsv"
    conda:
        "../envs/medxgan.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    params:
        settings=settings("data", "classifier", "oracle"),  # classifier: the oracle must differ from it
    shell:
        "medxgan train-oracle --settings {params.settings:q} --manifest {input.manifest:q}"
        " --out-dir results/{wildcards.dataset:q}/oracle --threads {threads} 2> {log:q}"


rule train_gan:
    input:
        manifest=manifest_of,
        classifier=rules.train_classifier.output.model,
    output:
        generator="results/{dataset}/gan/generator.safetensors",
        discriminator="results/{dataset}/gan/discriminator.safetensors",
        losses="results/{dataset}/gan/losses.csv",
        figure=report(
            "results/{dataset}/gan/losses.png",
            caption="../report/losses.rst",
            category="{dataset}",
            labels={"figure": "GAN losses"},
        ),
        summary="results/{dataset}/gan/summary.json",
    log:
        "results/{dataset}/logs/train_gan.log",
    benchmark:
        "results/{dataset}/benchmarks/train_gan.tsv"
    priority: ON_THE_LONG_PATH
    conda:
        "../envs/medxgan.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,  # minutes; a job cut off by its time limit resumes from gan/checkpoint.pt
    params:
        settings=settings("data", "gan", "precision"),
    shell:
        # checkpoint.pt in the same folder is not an output, so a killed run keeps it and resumes.
        "medxgan train-gan --settings {params.settings:q} --manifest {input.manifest:q}"
        " --classifier {input.classifier:q} --out-dir results/{wildcards.dataset:q}/gan --threads {threads} 2> {log:q}"


rule train_encoder:
    input:
        manifest=manifest_of,
        generator=rules.train_gan.output.generator,
    output:
        model="results/{dataset}/encoder/model.safetensors",
        metrics="results/{dataset}/encoder/metrics.json",
    log:
        "results/{dataset}/logs/train_encoder.log",
    benchmark:
        "results/{dataset}/benchmarks/train_encoder.tsv"
    priority: ON_THE_LONG_PATH
    conda:
        "../envs/medxgan.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    params:
        settings=settings("data", "encoder"),
    shell:
        "medxgan train-encoder --settings {params.settings:q} --manifest {input.manifest:q}"
        " --generator {input.generator:q} --out-dir results/{wildcards.dataset:q}/encoder --threads {threads} 2> {log:q}"
