"""Code versions of each stage's output: bump one to invalidate exactly that stage's results.

The workflow puts the matching constant in each rule's params, so Snakemake reruns the stage (and
everything downstream) when its code changes what it writes. Cache files record theirs as attributes.
"""

DEMO_DATA_VERSION = 1  # pipeline.demo.datasets: images and split of the demo datasets
SAMPLING_VERSION = 1  # pipeline.data.fewshot: which images a (shot, seed) draws
FIT_VERSION = 4  # pipeline.backbones: the stage-1 methods and their training loop (3: model logit scale,
# 4: the text tower stops at the end-of-text token)
EXTRACTION_VERSION = 4  # pipeline.extract: what the HDF5 caches hold (2: per-item view seeds; 3: schema 3;
# 4: class texts from the text tower stopped at the end-of-text token)
FMA_VERSION = (
    4  # pipeline.methods.fma: training, solver and metrics (2: official defaults, records, 3: fused AdamW,
    # 4: CoCoOp's per-image texts from the text tower stopped at the end-of-text token)
)
PROBE_VERSION = 2  # pipeline.methods.linear_probe: the linear probe protocol (2: result records)
TABLES_VERSION = 2  # pipeline.report: tables and figures (2: built from result records)
PRETRAIN_VERSION = 1  # pipeline.demo.pretrain: the demo backbone's recipe and data
