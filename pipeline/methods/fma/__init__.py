"""Flow Matching Alignment (docs/methods.md, section F): path, net, training, solver, evaluation, I/O."""
