# Result tables (CSV, Markdown, LaTeX) and the accuracy-vs-Euler-step figure, per backbone.


rule make_tables:
    input:
        fma=lambda w: fma_metrics(w.backbone),
        probe=lambda w: probe_results(w.backbone),
    output:
        md=f"{RESULTS}/tables/{{backbone}}/fewshot.md",
        csv=f"{RESULTS}/tables/{{backbone}}/fewshot.csv",
        tex=f"{RESULTS}/tables/{{backbone}}/fewshot.tex",
        png=f"{RESULTS}/tables/{{backbone}}/curves.png",
    log:
        f"{RESULTS}/logs/make_tables/{{backbone}}.log",
    localrule: True
    conda:
        "../../envs/pipeline.yaml"
    params:
        groups=canonical(config["groups"]),
        version=TABLES_VERSION,
    shell:
        "python -m pipeline.make_tables --fma {input.fma} --probe {input.probe}"
        " --groups {params.groups:q} --out-dir $(dirname {output.md}) > {log} 2>&1"
