"""Training: the loop shared by `tvc train` and distillation, with torchrun scale-out."""

from tvc.train.loop import TrainConfig, fit

__all__ = ["TrainConfig", "fit"]
