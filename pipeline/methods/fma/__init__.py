"""Flow Matching Alignment (SPEC 2): probability path, velocity net, trainer and early-stopping solver."""
