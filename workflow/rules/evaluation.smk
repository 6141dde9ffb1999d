# Scores per image and method, the paper's figures, the checks, one summary over all datasets and the notebooks.


rule evaluate:
    input:
        manifest=manifest_of,
        classifier=rules.train_classifier.output.model,
        classifier_metrics=rules.train_classifier.output.metrics,
        latents=rules.invert.output.latents,
        explanations=rules.explain.output.heatmaps,
        oracle=rules.train_oracle.output.model,
    output:
        summary="results/{dataset}/metrics.csv",
        headline="results/{dataset}/metrics.json",  # the headline numbers: DVC's metrics
        per_image="results/{dataset}/metrics_per_image.csv",
        comparisons="results/{dataset}/metrics_comparisons.csv",
        curves="results/{dataset}/metrics_curves.csv",
        provenance="results/{dataset}/metrics_provenance.json",
    log:
        "results/{dataset}/logs/evaluate.log",
    benchmark:
        "results/{dataset}/benchmarks/evaluate.tsv"
    conda:
        "../envs/medxgan.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        settings=settings("data", "evaluate"),
    shell:
        "medxgan evaluate --settings {params.settings:q} --manifest {input.manifest:q}"
        " --classifier {input.classifier:q} --inversion {input.latents:q} --explanations {input.explanations:q}"
        " --oracle {input.oracle:q} --classifier-metrics {input.classifier_metrics:q}"
        " --out-dir results/{wildcards.dataset:q} --threads {threads} 2> {log:q}"


rule figures:
    input:
        manifest=manifest_of,
        classifier=rules.train_classifier.output.model,
        generator=rules.train_gan.output.generator,
        latents=rules.invert.output.latents,
        explanations=rules.explain.output.heatmaps,
        metrics=rules.evaluate.output.summary,
        curves=rules.evaluate.output.curves,
        oracle=rules.train_oracle.output.model,
    output:
        pipeline=report(
            "results/{dataset}/figures/pipeline.png",
            caption="../report/pipeline.rst",
            category="{dataset}",
            labels={"figure": "pipeline rows"},
        ),
        interpolation=report(
            "results/{dataset}/figures/interpolation.png",
            caption="../report/interpolation.rst",
            category="{dataset}",
            labels={"figure": "interpolation"},
        ),
        metrics=report(
            "results/{dataset}/figures/metrics.png",
            caption="../report/metrics.rst",
            category="{dataset}",
            labels={"figure": "metrics"},
        ),
        inversion=report(
            "results/{dataset}/figures/inversion.png",
            caption="../report/inversion.rst",
            category="{dataset}",
            labels={"figure": "inversion quality"},
        ),
        curves=report(
            "results/{dataset}/figures/curves.png",
            caption="../report/curves.rst",
            category="{dataset}",
            labels={"figure": "deletion and insertion curves"},
        ),
        disentanglement=report(
            "results/{dataset}/figures/disentanglement.png",
            caption="../report/disentanglement.rst",
            category="{dataset}",
            labels={"figure": "disentanglement"},
        ),
        perturbation=report(
            "results/{dataset}/figures/perturbation.png",
            caption="../report/perturbation.rst",
            category="{dataset}",
            labels={"figure": "perturbation"},
        ),
    log:
        "results/{dataset}/logs/figures.log",
    benchmark:
        "results/{dataset}/benchmarks/figures.tsv"
    conda:
        "../envs/medxgan.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        settings=settings("data", "explain", "evaluate", "figures"),  # evaluate: the perturbed share of pixels
    shell:
        "medxgan figures --settings {params.settings:q} --manifest {input.manifest:q}"
        " --classifier {input.classifier:q} --generator {input.generator:q} --inversion {input.latents:q}"
        " --explanations {input.explanations:q} --metrics {input.metrics:q} --curves {input.curves:q}"
        " --oracle {input.oracle:q} --out-dir results/{wildcards.dataset:q}/figures --threads {threads} 2> {log:q}"


rule check:
    input:
        manifest=manifest_of,
        classifier=rules.train_classifier.output.model,
        generator=rules.train_gan.output.generator,
        latents=rules.invert.output.latents,
        encoder=encoder_of,
    output:
        sanity="results/{dataset}/checks/sanity.csv",
        robustness="results/{dataset}/checks/robustness.csv",
        counterfactual="results/{dataset}/checks/counterfactual.csv",
        provenance="results/{dataset}/checks/provenance.json",
        sanity_figure=report(
            "results/{dataset}/checks/sanity.png",
            caption="../report/sanity.rst",
            category="{dataset}",
            labels={"figure": "sanity check"},
        ),
        robustness_figure=report(
            "results/{dataset}/checks/robustness.png",
            caption="../report/robustness.rst",
            category="{dataset}",
            labels={"figure": "noise robustness"},
        ),
    log:
        "results/{dataset}/logs/check.log",
    benchmark:
        "results/{dataset}/benchmarks/check.tsv"
    conda:
        "../envs/medxgan.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,  # minutes on one GPU, every noisy copy inverted anew
    params:
        settings=settings("data", "inversion", "explain", "checks", "precision"),
        encoder=encoder_option,
    shell:
        "medxgan check --settings {params.settings:q} --manifest {input.manifest:q}"
        " --classifier {input.classifier:q} --generator {input.generator:q} --inversion {input.latents:q}"
        " {params.encoder} --out-dir results/{wildcards.dataset:q}/checks --threads {threads} 2> {log:q}"


rule summarize:
    input:
        metrics=expand("results/{dataset}/metrics.csv", dataset=DATASETS),
        classifiers=expand("results/{dataset}/classifier/metrics.json", dataset=DATASETS),
        gans=expand("results/{dataset}/gan/summary.json", dataset=DATASETS),
        checks=expand(
            "results/{dataset}/checks/{table}.csv", dataset=DATASETS, table=["sanity", "robustness", "counterfactual"]
        ),
    output:
        markdown=f"{RUN_DIR}/summary.md",
        table=f"{RUN_DIR}/summary.csv",
    log:
        f"{RUN_DIR}/logs/summarize.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/summarize.tsv"
    conda:
        "../envs/medxgan.yaml"
    params:
        datasets=DATASETS,
        families=[f"{name}={FAMILIES[name]}" for name in DATASETS if FAMILIES[name]],
    shell:
        "medxgan summarize --results results --datasets {params.datasets:q} --families {params.families:q}"
        " --out {output.markdown:q} 2> {log:q}"


rule notebook:
    input:
        source="notebooks/{notebook}.py",
        summary=rules.summarize.output.table,
        figures=expand("results/{dataset}/{figure}.png", dataset=DATASETS, figure=FIGURES),
        bundles=expand("results/{dataset}/bundle", dataset=DATASETS),  # the walkthrough explains with one
    output:
        html=f"{RUN_DIR}/notebooks/{{notebook}}.html",
    log:
        f"{RUN_DIR}/logs/notebook_{{notebook}}.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/notebook_{{notebook}}.tsv"
    conda:
        "../envs/medxgan.yaml"
    shell:
        "medxgan notebook {input.source:q} --summary {input.summary:q} --out {output.html:q} 2> {log:q}"


rule collect_benchmarks:
    input:
        # everything else the run builds, so this job runs last and finds every job's benchmark file
        summary=rules.summarize.output.markdown,
        notebooks=expand(f"{RUN_DIR}/notebooks/{{notebook}}.html", notebook=NOTEBOOKS),
        bundles=expand("results/{dataset}/bundle", dataset=DATASETS),
    output:
        table=f"{RUN_DIR}/benchmarks.csv",
        figure=report(
            f"{RUN_DIR}/benchmarks.png",
            caption="../report/benchmarks.rst",
            category="run",
            labels={"figure": "job times"},
        ),
    log:
        f"{RUN_DIR}/logs/collect_benchmarks.log",
    localrule: True
    conda:
        "../envs/medxgan.yaml"
    params:
        datasets=DATASETS,
    shell:
        "medxgan collect-benchmarks --results results --datasets {params.datasets:q} --out {output.table:q}"
        " --figure {output.figure:q} 2> {log:q}"


rule bundle:
    input:
        classifier=rules.train_classifier.output.model,
        classifier_metrics=rules.train_classifier.output.metrics,
        generator=rules.train_gan.output.generator,
        gan_summary=rules.train_gan.output.summary,
        encoder=encoder_of,
        inversion=rules.invert.output.table,
    output:
        bundle=directory("results/{dataset}/bundle"),
    log:
        "results/{dataset}/logs/bundle.log",
    benchmark:
        "results/{dataset}/benchmarks/bundle.tsv"
    localrule: True
    conda:
        "../envs/medxgan.yaml"
    params:
        settings=settings("data", "encoder", "inversion", "explain", "precision"),
    shell:
        "medxgan bundle --settings {params.settings:q} --results-dir results/{wildcards.dataset:q}"
        " --out {output.bundle:q} 2> {log:q}"
