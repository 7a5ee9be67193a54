"""Datasets: the name registry, the CoOp-layout reader, image decoding, few-shot sampling, demo builders."""
