# Stage 1 -> cache: HDF5 features per backbone (pipeline/features/cache.py). What runs is decided by
# the registry: a per-dataset test cache for a frozen image encoder that encodes images, a few-shot
# cache per run for every backbone, and a per-run test cache when the image side changes.

EXTRACT = (
    "$PYTHON -m pipeline.run extract --backbone {wildcards.backbone} --dataset {wildcards.dataset}"
    " --data-root {params.data_root:q} --config {params.cfg:q}"
    " --device {resources.device} --batch-size {resources.infer_batch}"
    " --workers {resources.io_workers} --threads {threads}"
)
RUN_ARGS = " --split-file {input.run_split:q} --shot {wildcards.shot} --seed {wildcards.seed} {params.sources}"


rule extract_test:
    """Test-split image features, once per dataset (frozen image encoder)."""
    input:
        split=lambda w: split_file(w.dataset),
        encoder=encoder_inputs(),
    output:
        TEST_H5,
    log:
        log_path("extract_test", "{dataset}"),
    wildcard_constraints:
        backbone=alternatives(TEST_PER_DATASET),
    conda:
        "../../envs/pipeline.yaml"
    threads: STAGE1_THREADS
    resources:
        gpu=GPU_JOB,
        device=RUNTIME_DEVICE,
        infer_batch=INFER_BATCH,
        io_workers=IO_WORKERS,
        runtime=job_minutes("extract_test"),
    params:
        cfg=lambda w: canonical(encoder_slice()),
        data_root=DATA_ROOT,
        version=EXTRACTION_VERSION,
    shell:
        f"{EXTRACT} --out {{output:q}} > {{log:q}} 2>&1"


rule extract_fewshot:
    """One run's few-shot cache (train views, val, class texts); the test cache is per dataset."""
    input:
        unpack(extract_inputs),
    output:
        FEWSHOT_H5,
    log:
        log_path("extract_fewshot"),
    wildcard_constraints:
        backbone=alternatives(FROZEN_IMAGE),
    conda:
        "../../envs/pipeline.yaml"
    threads: STAGE1_THREADS
    resources:
        gpu=GPU_JOB,
        device=RUNTIME_DEVICE,
        infer_batch=INFER_BATCH,
        io_workers=IO_WORKERS,
        runtime=job_minutes("extract_fewshot"),
    params:
        cfg=lambda w: extract_params(w.backbone, w.dataset),
        sources=extract_args,
        data_root=DATA_ROOT,
        version=EXTRACTION_VERSION,
    shell:
        f"{EXTRACT}{RUN_ARGS} --out {{output:q}} > {{log:q}} 2>&1"


rule extract_run:
    """One run's few-shot cache and its own test cache (the backbone changes the image side)."""
    input:
        unpack(extract_inputs),
    output:
        fewshot=FEWSHOT_H5,
        test=RUN_TEST_H5,
    log:
        log_path("extract_run"),
    wildcard_constraints:
        backbone=alternatives(IMAGE_CHANGED),
    conda:
        "../../envs/pipeline.yaml"
    threads: STAGE1_THREADS
    resources:
        gpu=GPU_JOB,
        device=RUNTIME_DEVICE,
        infer_batch=INFER_BATCH,
        io_workers=IO_WORKERS,
        runtime=job_minutes("extract_run"),
    params:
        cfg=lambda w: extract_params(w.backbone, w.dataset),
        sources=extract_args,
        data_root=DATA_ROOT,
        version=EXTRACTION_VERSION,
    shell:
        f"{EXTRACT}{RUN_ARGS} --out {{output.fewshot:q}} --test-out {{output.test:q}} > {{log:q}} 2>&1"
