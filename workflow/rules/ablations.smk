# FMA ablations (target: snakemake ablations --cores all): each variant overrides part of the fma
# config; runs go to results/ablations/, the table to results/tables/ablations.md.
# Backbone ablations (target: snakemake backbone_ablations --cores all): each variant overrides part
# of one trained backbone's recipe; runs go to results/backbone_ablations/, the table to
# results/tables/backbone_ablations.md.


rule train_fma_variant:
    input:
        unpack(stage2_inputs),
        split=lambda w: split_file(w.dataset) if variant_is_online(w.variant) else [],
        encoder=lambda w: encoder_inputs() if variant_is_online(w.variant) else [],
    output:
        metrics=VARIANT_JSON,
        checkpoint=VARIANT_PT,
    log:
        log_path("train_fma_variant", f"{RUN}/{{variant}}"),
    wildcard_constraints:
        backbone=alternatives(FEATURES_ONLY),
        variant=alternatives(OFFLINE_VARIANTS),
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    resources:
        device=RUNTIME_DEVICE,
        io_workers=IO_WORKERS,
        runtime=job_minutes("train_fma_variant"),
    params:
        cfg=lambda w: canonical(variant_fma_slice(w.variant)),
        expect=lambda w: expect_params(w.backbone, w.dataset),
        state=state_args,
        online=online_args,
        version=FMA_VERSION,
    shell:
        "$PYTHON -m pipeline.run train_fma --fewshot {input.fewshot:q} --test {input.test:q}"
        " --backbone {wildcards.backbone} --dataset {wildcards.dataset}"
        " --shot {wildcards.shot} --seed {wildcards.seed} --variant {wildcards.variant} {params.state}"
        " --config {params.cfg:q} --expect {params.expect:q} {params.online}"
        " --device {resources.device} --workers {resources.io_workers} --threads {threads}"
        " --metrics {output.metrics:q} --checkpoint {output.checkpoint:q} > {log:q} 2>&1"


# The variants that run an encoder: online views (a fresh augmented view of each training image per
# epoch) or a backbone with per-image class texts. A job either rule could make is train_fma_variant's.
use rule train_fma_variant as train_fma_variant_gpu with:
    wildcard_constraints:
        backbone=alternatives(NEEDED),
        variant=VARIANT_NAME,
    threads: STAGE1_THREADS
    resources:
        gpu=GPU_JOB,
        device=RUNTIME_DEVICE,
        io_workers=IO_WORKERS,
        runtime=job_minutes("train_fma_variant_gpu"),


ruleorder: train_fma_variant > train_fma_variant_gpu


rule make_ablation_table:
    input:
        records=ablation_runs(),
    output:
        reported(ABLATION_TABLE_FILES),
    log:
        f"{RESULTS}/logs/make_ablation_table.log",
    localrule: True
    conda:
        "../../envs/pipeline.yaml"
    resources:
        runtime=job_minutes("make_ablation_table"),
    params:
        labels=canonical_ordered(ABLATION_LABELS),
        out_dir=lambda w, output: os.path.dirname(output[0]),
        version=TABLES_VERSION,
    shell:
        "$PYTHON -m pipeline.run make_ablations --records {input.records:q} --labels {params.labels:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule ablations:
    input:
        ABLATION_TABLE_FILES,
        ablation_runs(),  # a missing record is remade, then the table (rules/common.smk, TABLE_RECORDS)
    localrule: True
    message:
        f"Done. Ablation tables: {TABLES}/ablations.md (.csv, .tex, .html)"


rule fit_backbone_variant:
    """Fit one recipe variant of the ablated backbone on one run; score its own test prediction."""
    input:
        unpack(fit_inputs),
    output:
        checkpoint=temp(FIT_VARIANT_PT),
        metrics=FIT_VARIANT_JSON,
        record=FIT_VARIANT_RECORD,
    log:
        log_path("fit_backbone_variant", f"{RUN}/{{variant}}"),
    conda:
        "../../envs/pipeline.yaml"
    threads: STAGE1_THREADS
    resources:
        gpu=GPU_JOB,
        device=RUNTIME_DEVICE,
        io_workers=IO_WORKERS,
        runtime=job_minutes("fit_backbone_variant"),
    params:
        cfg=lambda w: canonical(fit_variant_slice(w)),
        source=fit_args,
        version=FIT_VERSION,
    shell:
        "$PYTHON -m pipeline.run fit_backbone --backbone {wildcards.backbone} --dataset {wildcards.dataset}"
        " --shot {wildcards.shot} --seed {wildcards.seed} --config {params.cfg:q} {params.source}"
        " --device {resources.device} --workers {resources.io_workers} --threads {threads}"
        " --out {output.checkpoint:q} --metrics {output.metrics:q}"
        " --record {output.record:q} --variant {wildcards.variant} > {log:q} 2>&1"


rule make_backbone_ablation_table:
    input:
        records=backbone_ablation_runs(),
    output:
        reported(BACKBONE_ABLATION_TABLE_FILES),
    log:
        f"{RESULTS}/logs/make_backbone_ablation_table.log",
    localrule: True
    conda:
        "../../envs/pipeline.yaml"
    resources:
        runtime=job_minutes("make_backbone_ablation_table"),
    params:
        labels=canonical_ordered(BACKBONE_ABLATION_LABELS),
        out_dir=lambda w, output: os.path.dirname(output[0]),
        version=TABLES_VERSION,
    shell:
        "$PYTHON -m pipeline.run make_ablations --records {input.records:q} --labels {params.labels:q}"
        " --out-dir {params.out_dir:q} --stem backbone_ablations > {log:q} 2>&1"


rule backbone_ablations:
    input:
        BACKBONE_ABLATION_TABLE_FILES,
        backbone_ablation_runs(),
    localrule: True
    message:
        f"Done. Backbone ablation table: {TABLES}/backbone_ablations.md (.csv, .tex, .html)"
