# Stage 2: FMA velocity field on the cached features; val/test accuracy at every Euler step, M on val.


rule train_fma:
    input:
        fewshot=fewshot_cache(),
        test=test_cache,
    output:
        metrics=f"{RESULTS}/fma/{{backbone}}/{{dataset}}/{{shot}}shot_seed{{seed}}.json",
        checkpoint=f"{RESULTS}/fma/{{backbone}}/{{dataset}}/{{shot}}shot_seed{{seed}}.pt",
    log:
        f"{RESULTS}/logs/train_fma/{{backbone}}/{{dataset}}/{{shot}}shot_seed{{seed}}.log",
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    resources:
        device=RUNTIME_DEVICE,
    params:
        cfg=canonical(config["fma"]),
        expect=lambda w: canonical(cache_expectation(w.dataset)),
        version=FMA_VERSION,
    shell:
        "python -m pipeline.train_fma --fewshot {input.fewshot} --test {input.test}"
        " --backbone {wildcards.backbone} --dataset {wildcards.dataset}"
        " --shot {wildcards.shot} --seed {wildcards.seed}"
        " --config {params.cfg:q} --expect {params.expect:q} --device {resources.device} --threads {threads}"
        " --metrics {output.metrics} --checkpoint {output.checkpoint} > {log} 2>&1"
