# The embedded demo's own backbone: a small open_clip model pretrained contrastively on captioned
# images shipped in installed packages. Requested when encoder.pretrained names its output file.


rule pretrain_demo_backbone:
    output:
        checkpoint=f"{RESULTS}/demo_backbone/{{model}}.pt",
        metrics=f"{RESULTS}/demo_backbone/{{model}}.json",
    log:
        f"{RESULTS}/logs/pretrain_demo_backbone/{{model}}.log",
    wildcard_constraints:
        model=r"[A-Za-z0-9_.\-]+",
    conda:
        "../../envs/pipeline.yaml"
    threads: 2
    resources:
        gpu=GPU_JOB,
        device=RUNTIME_DEVICE,
        runtime=job_minutes("pretrain_demo_backbone"),
    params:
        cfg=lambda w: canonical({**config["demo_backbone"], "model": w.model}),
        version=PRETRAIN_VERSION,
    shell:
        "$PYTHON -m pipeline.run pretrain_demo --config {params.cfg:q} --device {resources.device}"
        " --threads {threads} --out {output.checkpoint:q} --metrics {output.metrics:q} > {log:q} 2>&1"
