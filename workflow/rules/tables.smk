# Result tables (CSV, Markdown, LaTeX) and the accuracy-vs-Euler-step figure, from every run's
# result record, whatever the method (pipeline/report/).


rule make_tables:
    input:
        records=runs(FMA_JSON, BACKBONES) + runs(PROBE_JSON, BACKBONES),
    output:
        TABLE_FILES,
    log:
        f"{RESULTS}/logs/make_tables.log",
    localrule: True
    conda:
        "../../envs/pipeline.yaml"
    params:
        groups=canonical(config["groups"]),
        order=canonical_ordered(BACKBONES),
        out_dir=lambda w, output: os.path.dirname(output[0]),
        version=TABLES_VERSION,
    shell:
        "$PYTHON -m pipeline.make_tables --records {input.records} --groups {params.groups:q}"
        " --backbones {params.order:q} --out-dir {params.out_dir} > {log} 2>&1"
