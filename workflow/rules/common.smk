# Helpers shared by the rules: where a dataset's manifest is, and each step's settings as JSON.


def manifest_of(wildcards):
    return manifest_path(config, wildcards.dataset)


def settings(*sections):
    """The JSON settings a step needs: when exactly these change, Snakemake reruns the step."""
    return lambda wildcards: step_settings(config, wildcards.dataset, *sections)


def methods_of(dataset):
    return dataset_settings(config, dataset)["explain"]["methods"]


def explanations_of(wildcards):
    return expand("results/{dataset}/explanations/{method}.safetensors",
                  dataset=wildcards.dataset, method=methods_of(wildcards.dataset))
