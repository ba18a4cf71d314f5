"""Evaluations of a model on a split: loss/accuracy/calibration with embedding and output norms,
robustness (test-time dropout, Gaussian input noise, FGSM) and error-coverage (AURC)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normstudy.trial._metrics import expected_calibration_error

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def forward_parts(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Embedding (timm pre-logits, before any dropout: ``build_model`` and ``final_dropout``
    put the head dropout inside the classifier) and logits, in one pass."""
    timm_model: Any = model  # timm's forward_features / forward_head / get_classifier
    embedding = timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)
    return embedding, timm_model.get_classifier()(embedding)


@torch.inference_mode()
def predict(
    model: nn.Module, batches: Batches, embedding_dropout: float = 0.0
) -> dict[str, torch.Tensor]:
    """Eval-mode probabilities, targets and squared norms of embeddings and logits (float64,
    gathered on the device and moved to the host once)."""
    was_training = model.training
    model.eval()
    probs, targets, emb2, out2 = [], [], [], []
    for x, y in batches:
        embedding, logits = forward_parts(model, x)
        if embedding_dropout:
            embedding = F.dropout(embedding, embedding_dropout, training=True)
            logits = model.get_classifier()(embedding)  # type: ignore[operator]
        probs.append(F.softmax(logits.double(), dim=1))
        targets.append(y)
        emb2.append(embedding.double().pow(2).sum(1))
        out2.append(logits.double().pow(2).sum(1))
    model.train(was_training)
    return {
        "probs": torch.cat(probs).cpu(),
        "targets": torch.cat(targets).cpu(),
        "emb_norm2": torch.cat(emb2).cpu(),
        "out_norm2": torch.cat(out2).cpu(),
    }


def summarize(pred: dict[str, torch.Tensor]) -> dict[str, float]:
    """loss (NLL), acc, ece, emb_norm2 and out_norm2 (means of ‖Emb(x)‖², ‖NN(x)‖²)."""
    p, t = pred["probs"], pred["targets"]
    return {
        "loss": float(F.nll_loss(torch.log(p.clamp_min(1e-300)), t)),
        "acc": float(p.argmax(1).eq(t).double().mean()),
        "ece": expected_calibration_error(p, t),
        "emb_norm2": float(pred["emb_norm2"].mean()),
        "out_norm2": float(pred["out_norm2"].mean()),
    }


def error_coverage(probs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Risk (error rate) at each coverage when rejecting the highest-entropy predictions first,
    and its area (AURC: the mean over coverages 1/N .. 1)."""
    entropy = -(probs * torch.log(probs.clamp_min(1e-300))).sum(1)
    order = torch.argsort(entropy, stable=True)  # most confident first
    errors = probs.argmax(1).ne(targets)[order].double()
    risk = errors.cumsum(0) / torch.arange(1, len(errors) + 1, dtype=torch.float64)
    return risk, float(risk.mean())


def coverage_curve_csv(risk: torch.Tensor, points: int = 101) -> str:
    n = len(risk)
    lines = ["coverage,risk"]
    for i in range(points):
        k = max(1, round(n * i / (points - 1)))
        lines.append(f"{k / n:.4f},{float(risk[k - 1]):.6f}")
    return "\n".join(lines) + "\n"


def accuracy_under_noise(model: nn.Module, batches: Batches, sigma: float, seed: int = 0) -> float:
    """Accuracy with N(0, σ²) added to every input (a fixed noise seed, global RNG untouched)."""
    generator = torch.Generator().manual_seed(seed)
    correct: Any = 0
    total = 0
    model.eval()
    with torch.inference_mode():
        for x, y in batches:
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            correct = correct + model(x + sigma * noise).argmax(1).eq(y).sum()
            total += len(y)
    return int(correct) / max(total, 1)


def accuracy_under_fgsm(model: nn.Module, batches: Batches, eps: float) -> float:
    """Accuracy on x + ε·sign(∇ₓ loss) (fast gradient sign method), model in eval mode."""
    model.eval()
    correct: Any = 0
    total = 0
    for x, y in batches:
        x = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(x).float(), y)
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            correct = correct + model(x + eps * grad.sign()).argmax(1).eq(y).sum()
        total += len(y)
    return int(correct) / max(total, 1)


def gamma_statistics(model: nn.Module) -> tuple[float | None, dict[str, float]]:
    """Mean γ² over every BN channel (not the input norm) and the mean γ² per layer."""
    from normstudy.models import norm_layers

    per_layer = {
        name: float(bn.weight.detach().double().pow(2).mean())
        for name, bn in norm_layers(model, skip_input_norm=True)
        if bn.weight is not None
    }
    weights = [
        bn.weight.detach().double().pow(2)
        for _, bn in norm_layers(model, skip_input_norm=True)
        if bn.weight is not None
    ]
    overall = float(torch.cat(weights).mean()) if weights else None
    return overall, per_layer


def gamma_artifact(model: nn.Module) -> str:
    return json.dumps(gamma_statistics(model)[1], indent=1)
