# Transfer protocols (docs/protocol.md): a run trained on one dataset (or on the base half of its
# classes) scored on another class set: the new half (base-to-new), other datasets (cross-dataset),
# test-only variants (domain generalization). Stage 1 rebuilds the run's trained backbone for the
# target's classes; stage 2 transports the target's features with the run's velocity field.


rule extract_transfer:
    """A run's backbone on a target: the target's class texts (and test features when the backbone
    changes the image side)."""
    input:
        unpack(transfer_extract_inputs),
    output:
        TRANSFER_H5,
    log:
        log_path("extract_transfer", f"{RUN}/{{target}}"),
    conda:
        "../../envs/pipeline.yaml"
    threads: STAGE1_THREADS
    resources:
        gpu=GPU_JOB,
        device=RUNTIME_DEVICE,
        infer_batch=INFER_BATCH,
        io_workers=IO_WORKERS,
        runtime=job_minutes("extract_transfer"),
    params:
        cfg=lambda w: transfer_params(w.backbone, w.target),
        sources=extract_args,
        data_root=DATA_ROOT,
        version=EXTRACTION_VERSION,
    shell:
        "$PYTHON -m pipeline.run extract_transfer --backbone {wildcards.backbone}"
        " --source {wildcards.dataset} --shot {wildcards.shot} --seed {wildcards.seed}"
        " --target {wildcards.target} --data-root {params.data_root:q} --config {params.cfg:q}"
        " {params.sources} --device {resources.device} --batch-size {resources.infer_batch}"
        " --workers {resources.io_workers} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule transfer_fma:
    """A run's backbone and velocity field on a target, M chosen on the run's own val split."""
    input:
        unpack(transfer_fma_inputs),
    output:
        TRANSFER_JSON,
    log:
        log_path("transfer_fma", f"{RUN}/{{target}}"),
    wildcard_constraints:
        backbone=alternatives(FEATURES_ONLY),
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    resources:
        device=RUNTIME_DEVICE,
        runtime=job_minutes("transfer_fma"),
    params:
        expect=canonical(encoder_expectation()),
        extra=transfer_args,
        version=FMA_VERSION,
    shell:
        "$PYTHON -m pipeline.run transfer_fma --transfer {input.transfer:q} --velocity {input.velocity:q}"
        " {params.extra} --backbone {wildcards.backbone} --source {wildcards.dataset}"
        " --shot {wildcards.shot} --seed {wildcards.seed} --target {wildcards.target}"
        " --expect {params.expect:q} --device {resources.device} --threads {threads}"
        " --out {output:q} > {log:q} 2>&1"


# CoCoOp's class texts for the target's test images: the text encoder runs here (common.smk).
use rule transfer_fma as transfer_fma_gpu with:
    wildcard_constraints:
        backbone=alternatives(TEXT_PER_IMAGE),
    threads: STAGE1_THREADS
    resources:
        gpu=GPU_JOB,
        device=RUNTIME_DEVICE,
        runtime=job_minutes("transfer_fma_gpu"),


rule transfer_probe:
    """A run's linear probe on a target with the run's classes (domain generalization)."""
    input:
        unpack(transfer_probe_inputs),
    output:
        TRANSFER_PROBE_JSON,
    log:
        log_path("transfer_probe", f"{RUN}/{{target}}"),
    wildcard_constraints:
        target=alternatives(PROBE_TARGETS),
        backbone=alternatives(PROBED),
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    resources:
        runtime=job_minutes("transfer_probe"),
    params:
        expect=canonical(encoder_expectation()),
        extra=transfer_args,
        version=PROBE_VERSION,
    shell:
        "$PYTHON -m pipeline.run transfer_probe --weights {input.weights:q} --transfer {input.transfer:q}"
        " {params.extra} --backbone {wildcards.backbone} --source {wildcards.dataset}"
        " --shot {wildcards.shot} --seed {wildcards.seed} --target {wildcards.target}"
        " --expect {params.expect:q} --out {output:q} > {log:q} 2>&1"


rule make_protocol_table:
    """One protocol's tables from its source runs' records and their transfer records."""
    input:
        records=lambda w: protocol_records(w.protocol),
    output:
        reported(protocol_table_files(["{protocol}"])),
    log:
        f"{RESULTS}/logs/make_protocol_table/{{protocol}}.log",
    wildcard_constraints:
        protocol=alternatives(list(PROTOCOLS)),
    localrule: True
    conda:
        "../../envs/pipeline.yaml"
    resources:
        runtime=job_minutes("make_protocol_table"),
    params:
        order=canonical_ordered(BACKBONES),
        groups=canonical_ordered(config["groups"]),
        out_dir=lambda w, output: os.path.dirname(output[0]),
        version=TABLES_VERSION,
    shell:
        "$PYTHON -m pipeline.run make_protocol_tables --protocol {wildcards.protocol}"
        " --records {input.records:q} --backbones {params.order:q} --groups {params.groups:q}"
        " --out-dir {params.out_dir:q}"
        " > {log:q} 2>&1"


rule protocols:
    """Every configured transfer protocol's tables (and each one alone: its name as the target)."""
    input:
        protocol_table_files(PROTOCOLS),
        [protocol_records(p) for p in PROTOCOLS],
    localrule: True


for _protocol in TRANSFER_PROTOCOLS:

    rule:
        name:
            _protocol
        input:
            protocol_table_files([_protocol] if _protocol in PROTOCOLS else []),
            protocol_records(_protocol) if _protocol in PROTOCOLS else [],
        localrule: True
