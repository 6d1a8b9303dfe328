"""The diffusion math: noise schedules, objectives (preconditioning), losses and samplers.

Framework-free by design: this package imports torch only (no Lightning, Hydra or W&B),
so it can be read, tested and reused on its own. Import each part from its own module.
"""
