# Inversion of the positive test images, then one job per explanation method.


rule invert:
    input:
        manifest=manifest_of,
        classifier=rules.train_classifier.output.model,
        generator=rules.train_gan.output.generator,
    output:
        latents="results/{dataset}/inversion/latents.safetensors",
        table="results/{dataset}/inversion/inversion.csv",
    params:
        settings=settings("data", "inversion"),
    threads: config["threads"]
    resources:
        gpu=1,
    log:
        "results/{dataset}/logs/invert.log",
    shell:
        "medxgan invert --settings {params.settings:q} --manifest {input.manifest:q}"
        " --classifier {input.classifier:q} --generator {input.generator:q}"
        " --out-dir results/{wildcards.dataset}/inversion --threads {threads} 2> {log:q}"


rule explain:
    input:
        manifest=manifest_of,
        classifier=rules.train_classifier.output.model,
        generator=rules.train_gan.output.generator,
        latents=rules.invert.output.latents,
    output:
        heatmaps="results/{dataset}/explanations/{method}.safetensors",
    params:
        settings=settings("data", "explain"),
    threads: config["threads"]
    resources:
        gpu=1,
    log:
        "results/{dataset}/logs/explain_{method}.log",
    shell:
        "medxgan explain --settings {params.settings:q} --manifest {input.manifest:q}"
        " --classifier {input.classifier:q} --generator {input.generator:q} --inversion {input.latents:q}"
        " --method {wildcards.method} --out {output.heatmaps:q} --threads {threads} 2> {log:q}"
