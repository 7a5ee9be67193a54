# Stage 1 -> cache: encode images and class texts with the backbone, write HDF5 (pipeline/feature_cache.py).


rule extract_test:
    """Test-split image features, once per backbone and dataset (frozen image encoder)."""
    input:
        split=lambda w: split_file(w.dataset),
        encoder=encoder_inputs(),
    output:
        f"{RESULTS}/features/{{backbone}}/{{dataset}}/test.h5",
    log:
        f"{RESULTS}/logs/extract_test/{{backbone}}/{{dataset}}.log",
    conda:
        "../../envs/pipeline.yaml"
    threads: 2
    resources:
        gpu=1,
        device=RUNTIME_DEVICE,
        infer_batch=INFER_BATCH,
        io_workers=IO_WORKERS,
    params:
        cfg=lambda w: canonical(encoder_slice()),
        data_root=DATA_ROOT,
        version=EXTRACTION_VERSION,
    shell:
        "python -m pipeline.extract --kind test --backbone {wildcards.backbone}"
        " --dataset {wildcards.dataset} --data-root {params.data_root} --config {params.cfg:q}"
        " --device {resources.device} --batch-size {resources.infer_batch}"
        " --workers {resources.io_workers} --threads {threads} --out {output} > {log} 2>&1"


rule extract_fewshot:
    """Few-shot train views (center + K augmented), val features and class text features."""
    input:
        split=lambda w: split_file(w.dataset),
        fewshot=f"{RESULTS}/splits/{{dataset}}/{{shot}}shot_seed{{seed}}.json",
        encoder=encoder_inputs(),
    output:
        fewshot_cache(),
    log:
        f"{RESULTS}/logs/extract_fewshot/{{backbone}}/{{dataset}}/{{shot}}shot_seed{{seed}}.log",
    conda:
        "../../envs/pipeline.yaml"
    threads: 2
    resources:
        gpu=1,
        device=RUNTIME_DEVICE,
        infer_batch=INFER_BATCH,
        io_workers=IO_WORKERS,
    params:
        cfg=lambda w: canonical(fewshot_extraction_slice(w.dataset)),
        data_root=DATA_ROOT,
        version=EXTRACTION_VERSION,
    shell:
        "python -m pipeline.extract --kind fewshot --backbone {wildcards.backbone}"
        " --dataset {wildcards.dataset} --data-root {params.data_root} --split-file {input.fewshot}"
        " --shot {wildcards.shot} --seed {wildcards.seed} --config {params.cfg:q}"
        " --device {resources.device} --batch-size {resources.infer_batch}"
        " --workers {resources.io_workers} --threads {threads} --out {output} > {log} 2>&1"
