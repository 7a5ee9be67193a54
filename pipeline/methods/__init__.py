"""Stage-2 methods trained on cached features: FMA and the linear probe."""
