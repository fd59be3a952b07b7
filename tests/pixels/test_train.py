import numpy as np
import torch

from tvc.models.igpt import CONFIGS, ImageGPT
from tvc.train.pixels import (
    PixelTrainConfig,
    classify_accuracy,
    distill_pixels,
    finetune,
    heldout_bpd,
    pretrain,
)


def test_pretraining_lowers_bits_per_dim(synth):
    torch.manual_seed(0)
    model = ImageGPT(CONFIGS["igpt_pico"])
    before = heldout_bpd(model, synth.tokens[200:])
    cfg = PixelTrainConfig(epochs=0, max_steps=60, batch_size=32, lr=3e-3, warmup_steps=5)
    report = pretrain(model, synth.tokens[:200], cfg, val_tokens=synth.tokens[200:])
    assert report["steps"] == 60 and report["history"]
    assert report["val_bpd"] < before - 0.5  # log2(8) = 3 bits at the start


def test_finetuning_learns_separable_classes(synth):
    torch.manual_seed(0)
    model = ImageGPT(CONFIGS["igpt_pico"])
    cfg = PixelTrainConfig(epochs=0, max_steps=60, batch_size=32, lr=3e-3, warmup_steps=5)
    report = finetune(
        model,
        synth.tokens[:200],
        synth.labels[:200],
        cfg,
        val=(synth.tokens[200:], synth.labels[200:]),
    )
    assert report["val_accuracy"] >= 0.95
    assert classify_accuracy(model, synth.tokens[200:], synth.labels[200:]) >= 0.95


def test_distillation_moves_the_student_towards_the_teacher(synth):
    torch.manual_seed(0)
    teacher = ImageGPT(CONFIGS["igpt_pico"])
    pretrain(
        teacher,
        synth.tokens,
        PixelTrainConfig(epochs=0, max_steps=60, batch_size=32, lr=3e-3, warmup_steps=5),
    )
    torch.manual_seed(1)
    student = ImageGPT(CONFIGS["igpt_pico"])

    def kl(a, b):
        with torch.no_grad():
            x = torch.from_numpy(synth.tokens[:64])
            p, q = a.logits(x).log_softmax(-1), b.logits(x).log_softmax(-1)
            return float((p.exp() * (p - q)).sum(-1).mean())

    before = kl(teacher, student)
    cfg = PixelTrainConfig(
        epochs=0, max_steps=40, batch_size=32, lr=3e-3, warmup_steps=5, log_every=10, alpha=1.0
    )
    report = distill_pixels(student, teacher, synth.tokens, cfg, val_tokens=synth.tokens[:64])
    assert kl(teacher, student) < before / 3
    assert report["history"][-1]["kd"] < report["history"][0]["kd"]
    assert np.isfinite(report["val_bpd"])
