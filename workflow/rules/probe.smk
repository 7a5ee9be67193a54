# Stage 2: linear probe on the cached image features (CoOp's lpclip protocol, C searched on val).


rule train_probe:
    input:
        fewshot=FEWSHOT_H5,
        test=lambda w: test_cache(w.backbone, w),
    output:
        PROBE_JSON,
    log:
        log_path("train_probe"),
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    params:
        cfg=canonical(config["probe"]),
        expect=lambda w: canonical(cache_expectation(w.backbone, w.dataset)),
        version=PROBE_VERSION,
    shell:
        "$PYTHON -m pipeline.train_probe --fewshot {input.fewshot} --test {input.test}"
        " --backbone {wildcards.backbone} --dataset {wildcards.dataset}"
        " --shot {wildcards.shot} --seed {wildcards.seed}"
        " --config {params.cfg:q} --expect {params.expect:q} --threads {threads}"
        " --out {output} > {log} 2>&1"
