# Stage 1, training: each trained backbone (registry: trains) fits on one run first. It trains on
# the cached views of the backbone it reuses, or on the images (then it gets a GPU).


rule fit_backbone:
    """Train one backbone on one (dataset, shot, seed); save its trained parameters only."""
    input:
        unpack(fit_inputs),
    output:
        checkpoint=FIT_PT,
        metrics=FIT_JSON,
    log:
        log_path("fit_backbone"),
    wildcard_constraints:
        backbone=alternatives(TRAINED),
    conda:
        "../../envs/pipeline.yaml"
    threads: STAGE1_THREADS
    resources:
        gpu=GPU_JOB,
        device=RUNTIME_DEVICE,
        io_workers=IO_WORKERS,
        runtime=job_minutes("fit_backbone"),
    params:
        cfg=lambda w: fit_params(w.backbone, w.dataset, w.shot),
        source=fit_args,
        version=FIT_VERSION,
    shell:
        "$PYTHON -m pipeline.run fit_backbone --backbone {wildcards.backbone} --dataset {wildcards.dataset}"
        " --shot {wildcards.shot} --seed {wildcards.seed} --config {params.cfg:q} {params.source}"
        " --device {resources.device} --workers {resources.io_workers} --threads {threads}"
        " --out {output.checkpoint:q} --metrics {output.metrics:q} > {log:q} 2>&1"
