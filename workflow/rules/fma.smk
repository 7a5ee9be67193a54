# Stage 2: FMA velocity field on one backbone's cached features; val/test accuracy at every Euler
# step, M chosen on val; one result record per run (pipeline/report/records.py). A backbone with
# per-image class texts (CoCoOp) runs the text encoder here: its jobs are train_fma_gpu.


rule train_fma:
    input:
        unpack(stage2_inputs),
    output:
        metrics=FMA_JSON,
        checkpoint=FMA_PT,
    log:
        log_path("train_fma"),
    wildcard_constraints:
        backbone=alternatives(FEATURES_ONLY),
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    resources:
        device=RUNTIME_DEVICE,
        runtime=job_minutes("train_fma"),
    params:
        cfg=canonical(config["fma"]),
        expect=lambda w: expect_params(w.backbone, w.dataset),
        state=state_args,
        version=FMA_VERSION,
    shell:
        "$PYTHON -m pipeline.run train_fma --fewshot {input.fewshot:q} --test {input.test:q}"
        " --backbone {wildcards.backbone} --dataset {wildcards.dataset}"
        " --shot {wildcards.shot} --seed {wildcards.seed} {params.state}"
        " --config {params.cfg:q} --expect {params.expect:q} --device {resources.device} --threads {threads}"
        " --metrics {output.metrics:q} --checkpoint {output.checkpoint:q} > {log:q} 2>&1"


use rule train_fma as train_fma_gpu with:
    wildcard_constraints:
        backbone=alternatives(TEXT_PER_IMAGE),
    threads: STAGE1_THREADS
    resources:
        gpu=GPU_JOB,
        device=RUNTIME_DEVICE,
        runtime=job_minutes("train_fma_gpu"),
