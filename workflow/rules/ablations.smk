# FMA ablations (target: snakemake ablations --cores all): each variant overrides part of the fma
# config; runs go to results/ablations/, the table to results/tables/<backbone>/ablations.md.


rule train_fma_variant:
    input:
        fewshot=fewshot_cache(),
        test=test_cache,
        split=lambda w: split_file(w.dataset) if variant_is_online(w.variant) else [],
        encoder=lambda w: encoder_inputs() if variant_is_online(w.variant) else [],
    output:
        metrics=f"{RESULTS}/ablations/{{backbone}}/{{dataset}}/{{shot}}shot_seed{{seed}}/{{variant}}.json",
        checkpoint=f"{RESULTS}/ablations/{{backbone}}/{{dataset}}/{{shot}}shot_seed{{seed}}/{{variant}}.pt",
    log:
        f"{RESULTS}/logs/train_fma_variant/{{backbone}}/{{dataset}}/{{shot}}shot_seed{{seed}}/{{variant}}.log",
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    resources:
        device=RUNTIME_DEVICE,
        io_workers=IO_WORKERS,
    params:
        cfg=lambda w: canonical(variant_fma_slice(w.variant)),
        expect=lambda w: canonical(cache_expectation(w.dataset)),
        online=lambda w: online_args(w.variant),
        version=FMA_VERSION,
    shell:
        "python -m pipeline.train_fma --fewshot {input.fewshot} --test {input.test}"
        " --backbone {wildcards.backbone} --dataset {wildcards.dataset}"
        " --shot {wildcards.shot} --seed {wildcards.seed} --variant {wildcards.variant}"
        " --config {params.cfg:q} --expect {params.expect:q} {params.online}"
        " --device {resources.device} --workers {resources.io_workers} --threads {threads}"
        " --metrics {output.metrics} --checkpoint {output.checkpoint} > {log} 2>&1"


rule make_ablation_table:
    input:
        runs=lambda w: ablation_runs(w.backbone),
    output:
        md=f"{RESULTS}/tables/{{backbone}}/ablations.md",
        csv=f"{RESULTS}/tables/{{backbone}}/ablations.csv",
        tex=f"{RESULTS}/tables/{{backbone}}/ablations.tex",
    log:
        f"{RESULTS}/logs/make_ablation_table/{{backbone}}.log",
    localrule: True
    conda:
        "../../envs/pipeline.yaml"
    params:
        labels=canonical_ordered(ABLATION_LABELS),
        version=TABLES_VERSION,
    shell:
        "python -m pipeline.make_ablations --runs {input.runs} --labels {params.labels:q}"
        " --out-dir $(dirname {output.md}) > {log} 2>&1"


rule ablations:
    input:
        ablation_table_outputs(),
    localrule: True
    message:
        f"Done. Ablation tables: {ABLATION_TABLES}"
