# Stage 2: linear probe on the cached image features (CoOp's lpclip protocol, C searched on val), once
# per distinct set of image features (PROBED in common.smk: CoOp's and CoCoOp's probe is zero-shot CLIP's).


rule train_probe:
    input:
        fewshot=FEWSHOT_H5,
        test=lambda w: test_cache(w.backbone, w),
    output:
        record=PROBE_JSON,
        weights=PROBE_NPZ,
    log:
        log_path("train_probe"),
    wildcard_constraints:
        backbone=alternatives(PROBED),
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    resources:
        runtime=job_minutes("train_probe"),
    params:
        cfg=canonical(config["probe"]),
        expect=lambda w: expect_params(w.backbone, w.dataset),
        version=PROBE_VERSION,
    shell:
        "$PYTHON -m pipeline.run train_probe --fewshot {input.fewshot:q} --test {input.test:q}"
        " --backbone {wildcards.backbone} --dataset {wildcards.dataset}"
        " --shot {wildcards.shot} --seed {wildcards.seed}"
        " --config {params.cfg:q} --expect {params.expect:q} --threads {threads}"
        " --weights {output.weights:q} --out {output.record:q} > {log:q} 2>&1"
