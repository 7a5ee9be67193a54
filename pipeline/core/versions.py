"""Code versions of each stage's output: bump one to invalidate exactly that stage's results.

The workflow puts the matching constant in each rule's params, so Snakemake reruns the stage (and
everything downstream) when its code changes what it writes. Cache files record theirs as attributes.
"""

DEMO_DATA_VERSION = 1  # pipeline.demo.datasets: images and split of the demo datasets
SAMPLING_VERSION = 1  # pipeline.data.fewshot: which images a (shot, seed) draws
EXTRACTION_VERSION = 1  # pipeline.extract: what the HDF5 caches hold
FMA_VERSION = 1  # pipeline.methods.fma: training, solver and metrics
PROBE_VERSION = 1  # pipeline.methods.linear_probe: the linear probe protocol
TABLES_VERSION = 1  # pipeline.report.fewshot: tables and figure
PRETRAIN_VERSION = 1  # pipeline.demo.pretrain: the demo backbone's recipe and data
