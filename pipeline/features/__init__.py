"""Stage-1 outputs: the HDF5 feature cache, image views and the extraction jobs that write them."""
