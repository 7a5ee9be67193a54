# Result tables (CSV, Markdown, LaTeX, HTML) and the accuracy-vs-Euler-step figure, from every run's
# result record, whatever the method (pipeline/report/). The HTML tables and the figure are flagged
# for `snakemake --report` (REPORT_ITEMS in rules/common.smk).


rule make_tables:
    input:
        records=TABLE_RECORDS,
    output:
        reported(TABLE_FILES),
    log:
        f"{RESULTS}/logs/make_tables.log",
    localrule: True
    conda:
        "../../envs/pipeline.yaml"
    resources:
        runtime=job_minutes("make_tables"),
    params:
        groups=canonical(config["groups"]),
        order=canonical_ordered(BACKBONES),
        out_dir=lambda w, output: os.path.dirname(output[0]),
        version=TABLES_VERSION,
    shell:
        "$PYTHON -m pipeline.run make_tables --records {input.records:q} --groups {params.groups:q}"
        " --backbones {params.order:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
