"""Stage-1 backbones: a torch-free registry (``registry``) of one module per method.

``pipeline.backbones.registry`` is safe to import without torch (the workflow reads it at parse
time); ``load_backbone_class`` imports a backbone's module only when it is used.
"""
