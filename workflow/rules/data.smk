# The built-in synthetic datasets, and the public ones. A user's own manifest needs no rule: it is
# read where it is.


rule prepare:
    output:
        manifest="data/{phantom}/manifest.csv",
    log:
        "results/{phantom}/logs/prepare.log",
    benchmark:
        "results/{phantom}/benchmarks/prepare.tsv"
    wildcard_constraints:
        phantom="|".join(map(re.escape, PHANTOMS)) or "^$",
    conda:
        "../envs/medxgan.yaml"
    params:
        settings=lambda w: step_settings(config, w.phantom, "data", "phantom"),
        out_dir=lambda w, output: os.path.dirname(output.manifest),
    shell:
        "medxgan prepare --settings {params.settings:q} --out-dir {params.out_dir:q} 2> {log:q}"


# Public datasets (datasets.NAME.source in the config): fetched and checked by `download`, which
# needs the internet (a local rule, so on a cluster it runs where the workflow starts), then
# prepared into the manifest format by `prepare_source`.
SOURCES = [name for name, entry in config["datasets"].items() if "source" in entry]


localrules:
    download,
    vgg16_weights,


rule download:
    output:
        record="data/{source_dataset}/SOURCE.json",
    log:
        "results/{source_dataset}/logs/download.log",
    benchmark:
        "results/{source_dataset}/benchmarks/download.tsv"
    wildcard_constraints:
        source_dataset="|".join(map(re.escape, SOURCES)) or "^$",
    conda:
        "../envs/medxgan.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=240,  # minutes: the largest set (figshare, ~0.9 GB) over a slow link
    params:
        settings=lambda w: step_settings(config, w.source_dataset, "source"),
        out_dir=lambda w, output: os.path.dirname(output.record),
    shell:
        "medxgan download --settings {params.settings:q} --out-dir {params.out_dir:q} 2> {log:q}"


rule prepare_source:
    input:
        record=rules.download.output.record,
        negatives=borrowed_negatives,
    output:
        manifest="data/{source_dataset}/manifest.csv",
    log:
        "results/{source_dataset}/logs/prepare.log",
    benchmark:
        "results/{source_dataset}/benchmarks/prepare.tsv"
    wildcard_constraints:
        source_dataset="|".join(map(re.escape, SOURCES)) or "^$",
    conda:
        "../envs/medxgan.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,  # minutes: about 10 ms per image to read, resize and write
    params:
        settings=lambda w: step_settings(config, w.source_dataset, "data", "source"),
        out_dir=lambda w, output: os.path.dirname(output.manifest),
    shell:
        "medxgan prepare --settings {params.settings:q} --out-dir {params.out_dir:q} 2> {log:q}"


# ImageNet VGG16 weights for the COVID classifier (classifier.weights in config/paper.yaml):
# torchvision's file, whose name carries the start of its sha256, which the download checks.
VGG16_WEIGHTS = "data/weights/vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"


rule vgg16_weights:
    output:
        VGG16_WEIGHTS,
    log:
        "results/logs/vgg16_weights.log",
    benchmark:
        "results/benchmarks/vgg16_weights.tsv"
    conda:
        "../envs/medxgan.yaml"
    params:
        url=VGG16_URL,
        sha256_prefix="397923af",
    shell:
        "python -c 'import sys, torch; torch.hub.download_url_to_file(*sys.argv[1:3], hash_prefix=sys.argv[3])'"
        " {params.url:q} {output:q} {params.sha256_prefix} 2> {log:q}"
