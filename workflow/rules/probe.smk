# Stage 2: linear probe on the cached features (CoOp's lpclip protocol, C searched on val).


rule linear_probe:
    input:
        fewshot=fewshot_cache(),
        test=test_cache,
    output:
        f"{RESULTS}/probe/{{backbone}}/{{dataset}}/{{shot}}shot_seed{{seed}}.json",
    log:
        f"{RESULTS}/logs/linear_probe/{{backbone}}/{{dataset}}/{{shot}}shot_seed{{seed}}.log",
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    params:
        cfg=canonical(config["probe"]),
        expect=lambda w: canonical(cache_expectation(w.dataset)),
        version=PROBE_VERSION,
    shell:
        "python -m pipeline.train_probe --fewshot {input.fewshot} --test {input.test}"
        " --backbone {wildcards.backbone} --dataset {wildcards.dataset}"
        " --shot {wildcards.shot} --seed {wildcards.seed}"
        " --config {params.cfg:q} --expect {params.expect:q} --threads {threads}"
        " --out {output} > {log} 2>&1"
