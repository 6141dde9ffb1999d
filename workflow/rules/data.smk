# The built-in synthetic datasets. A user's own manifest needs no rule: it is read where it is.


rule prepare:
    output:
        manifest="data/{phantom}/manifest.csv",
    wildcard_constraints:
        phantom="|".join(map(re.escape, PHANTOMS)) or "^$",
    params:
        settings=lambda w: step_settings(config, w.phantom, "data", "phantom"),
        out_dir=lambda w, output: os.path.dirname(output.manifest),
    log:
        "results/{phantom}/logs/prepare.log",
    shell:
        "medxgan prepare --settings {params.settings:q} --out-dir {params.out_dir:q} 2> {log:q}"
