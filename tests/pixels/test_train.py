import numpy as np
import pytest
import torch

from tvc.errors import ConfigError
from tvc.models.igpt import CONFIGS, ImageGPT
from tvc.train.pixels import (
    PixelTrainConfig,
    augment_tokens,
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


@pytest.mark.parametrize("augment", [False, True])
def test_finetuning_learns_separable_classes(synth, augment):
    """With augmentation too; validation accuracy is checked every eval_every steps."""
    torch.manual_seed(0)
    model = ImageGPT(CONFIGS["igpt_pico"])
    cfg = PixelTrainConfig(
        epochs=0, max_steps=60, batch_size=32, lr=3e-3, warmup_steps=5, augment=augment,
        log_every=20, eval_every=20,
    )  # fmt: skip
    report = finetune(
        model,
        synth.tokens[:200],
        synth.labels[:200],
        cfg,
        val=(synth.tokens[200:], synth.labels[200:]),
    )
    assert report["config"]["augment"] is augment
    assert [row["step"] for row in report["history"] if "val_accuracy" in row] == [20, 40, 60]
    assert report["val_accuracy"] >= (0.9 if augment else 0.95)
    assert classify_accuracy(model, synth.tokens[200:], synth.labels[200:]) >= 0.9


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_finetuning_follows_soft_targets_by_alpha(synth, alpha):
    """Soft targets name the true classes while the labels given are all flipped: with
    alpha = 1 (KD only) the model must learn the teacher's classes, with alpha = 0 the labels."""
    torch.manual_seed(0)
    model = ImageGPT(CONFIGS["igpt_pico"])
    classes = model.cls_head.out_features
    teacher = np.full((200, classes), -4.0, np.float32)
    teacher[np.arange(200), synth.labels[:200]] = 4.0
    cfg = PixelTrainConfig(
        epochs=0, max_steps=60, batch_size=32, lr=3e-3, warmup_steps=5, alpha=alpha,
        temperature=2.0,
    )  # fmt: skip
    report = finetune(model, synth.tokens[:200], 1 - synth.labels[:200], cfg, soft_targets=teacher)
    assert "kd" in report["history"][-1]
    acc = classify_accuracy(model, synth.tokens[200:], synth.labels[200:])
    assert acc >= 0.9 if alpha == 1.0 else acc <= 0.1


@pytest.mark.parametrize(
    "bad, problem",
    [(np.zeros((199, 10), np.float32), "shape"), (np.full((200, 10), np.nan), "NaN")],
)
def test_finetuning_refuses_misfit_soft_targets(synth, bad, problem):
    model = ImageGPT(CONFIGS["igpt_pico"])
    bad = bad[:, : model.cls_head.out_features]
    cfg = PixelTrainConfig(epochs=0, max_steps=1)
    with pytest.raises(ConfigError, match=problem):
        finetune(model, synth.tokens[:200], synth.labels[:200], cfg, soft_targets=bad)


def test_mirror_averaged_accuracy_averages_each_image_with_its_mirror(synth):
    torch.manual_seed(0)
    model = ImageGPT(CONFIGS["igpt_pico"]).eval()
    with torch.no_grad():  # a head that tells the images apart (at init all pick one class)
        model.cls_head.weight.normal_(std=30.0)
        model.cls_head.bias.zero_()
    x = torch.from_numpy(synth.tokens[:64].astype(np.int64))
    mirrored = x.reshape(64, 8, 8).flip(2).reshape(64, 64)
    with torch.no_grad():
        plain, flipped = model(x)[2], model(mirrored)[2]
    # labels the averaged logits pick: only the mirror-averaged accuracy can be exactly 1
    labels = (plain + flipped).argmax(1).numpy()
    assert classify_accuracy(model, synth.tokens[:64], labels, batch=16, mirror=True) == 1.0
    assert (plain.argmax(1).numpy() != labels).any()  # the mirror changes some answers
    assert classify_accuracy(model, synth.tokens[:64], labels) < 1.0


def test_token_augmentation_shifts_and_mirrors_the_raster_image():
    h, w = 4, 5
    x = torch.arange(2 * h * w).reshape(2, h * w) % 16
    imgs = x.reshape(2, h, w)
    seen = set()
    for draw in range(40):
        got = augment_tokens(x, h, w, seed=3, draw=draw, idx=np.arange(2)).reshape(2, h, w)
        assert torch.equal(got, augment_tokens(x, h, w, 3, draw, np.arange(2)).reshape(2, h, w))
        mirrored = augment_tokens(x, h, w, seed=3, draw=draw, idx=np.arange(2), shift=0)
        for b in range(2):  # shift 0: each image as it is, or mirrored
            m = mirrored.reshape(2, h, w)[b]
            assert torch.equal(m, imgs[b]) or torch.equal(m, imgs[b].flip(1))
        assert got.dtype == torch.int64
        for b in range(2):
            # every output is some shift (edges repeated) of the image, mirrored or not
            matches = []
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    rows = (torch.arange(h) + dy).clamp(0, h - 1)
                    cols = (torch.arange(w) + dx).clamp(0, w - 1)
                    shifted = imgs[b][rows][:, cols]
                    for flip in (False, True):
                        if torch.equal(got[b], shifted.flip(1) if flip else shifted):
                            matches.append((dy, dx, flip))
            assert matches, f"draw {draw} image {b} is not a shifted/mirrored copy"
            seen.update(matches)
    assert (0, 0, False) in seen and any(m[2] for m in seen) and len(seen) > 6


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


def test_ema_keeps_the_running_average_of_the_weights(synth, monkeypatch):
    """Two identical runs, one keeping an EMA of its weights: the EMA run ends on the average
    of the start and every step's weights, recomputed here from the plain run's trajectory."""
    cfg = dict(epochs=0, max_steps=8, batch_size=32, lr=3e-3, warmup_steps=2, clip=0.0)
    torch.manual_seed(0)
    plain = ImageGPT(CONFIGS["igpt_pico"])
    start = {k: v.clone() for k, v in plain.state_dict().items()}
    trajectory, opt_step = [], torch.optim.AdamW.step

    def record(self, *a, **k):  # the plain run's weights after every step
        out = opt_step(self, *a, **k)
        trajectory.append([p.detach().clone() for p in plain.parameters()])
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    pretrain(plain, synth.tokens[:200], PixelTrainConfig(**cfg))
    monkeypatch.undo()
    averaged = ImageGPT(CONFIGS["igpt_pico"])
    averaged.load_state_dict(start)
    expected = [start[name].clone() for name, _ in averaged.named_parameters()]
    for weights in trajectory:
        for avg, w in zip(expected, weights, strict=True):
            avg.lerp_(w, 0.25)
    pretrain(averaged, synth.tokens[:200], PixelTrainConfig(**cfg, ema=0.75))
    assert len(trajectory) == 8
    for got, want in zip(averaged.parameters(), expected, strict=True):
        torch.testing.assert_close(got.detach(), want)
    pairs = zip(averaged.parameters(), trajectory[-1], strict=True)
    assert any(not torch.equal(g.detach(), w) for g, w in pairs)  # not just the last step
    with pytest.raises(ConfigError, match="ema"):
        PixelTrainConfig(epochs=1, ema=1.0).validate()
