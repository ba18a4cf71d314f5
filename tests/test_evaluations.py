"""Trial evaluations against direct computations: error-coverage, noise, FGSM, test-time dropout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normstudy.trial import _evaluations as ev

torch.set_num_threads(1)


def test_error_coverage_rejects_by_entropy() -> None:
    probs = torch.tensor([[0.99, 0.01], [0.6, 0.4], [0.9, 0.1], [0.5, 0.5]], dtype=torch.float64)
    targets = torch.tensor([0, 1, 1, 0])  # errors at samples 1 (p=.6) and 2 (p=.9)
    risk, aurc = ev.error_coverage(probs, targets)
    # Most confident first: 0 (ok), 2 (error), 1 (error), 3 (ok; argmax of a tie is 0).
    expected = torch.tensor([0 / 1, 1 / 2, 2 / 3, 2 / 4], dtype=torch.float64)
    torch.testing.assert_close(risk, expected)
    assert aurc == pytest.approx(float(expected.mean()))
    csv = ev.coverage_curve_csv(risk, points=5).splitlines()
    assert csv[0] == "coverage,risk" and csv[-1] == "1.0000,0.500000"


class _Tiny(nn.Module):
    """timm's interface (forward_features / forward_head / get_classifier) on a linear model."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    return [(x[:32], torch.arange(32) % 3), (x[32:], torch.arange(32) % 3)]


def test_predict_reports_norms_and_nll() -> None:
    model = _Tiny()
    summary = ev.summarize(ev.predict(model, _data()))
    x = torch.cat([b[0] for b in _data()])
    y = torch.cat([b[1] for b in _data()])
    with torch.no_grad():
        logits = model(x).double()
    assert summary["loss"] == pytest.approx(float(F.cross_entropy(logits, y)))
    assert summary["emb_norm2"] == pytest.approx(float(x.double().pow(2).sum(1).mean()))
    assert summary["out_norm2"] == pytest.approx(float(logits.pow(2).sum(1).mean()))


def test_embedding_dropout_matches_a_direct_computation() -> None:
    model = _Tiny()
    torch.manual_seed(5)
    pred = ev.predict(model, _data(), embedding_dropout=0.5)
    torch.manual_seed(5)
    expected = [
        F.softmax(model.fc(F.dropout(x, 0.5, training=True)).double(), 1) for x, _ in _data()
    ]
    torch.testing.assert_close(pred["probs"], torch.cat(expected))


def test_noise_and_fgsm_accuracies() -> None:
    model = _Tiny()
    clean = ev.summarize(ev.predict(model, _data()))["acc"]
    assert ev.accuracy_under_noise(model, _data(), sigma=1e-9) == pytest.approx(clean)
    state = torch.get_rng_state()
    noisy = ev.accuracy_under_noise(model, _data(), sigma=5.0)
    assert torch.equal(state, torch.get_rng_state())  # the training RNG is left alone
    assert noisy == ev.accuracy_under_noise(model, _data(), sigma=5.0)  # fixed noise seed
    # FGSM moves each input against its own label: direct computation.
    correct = 0
    for x, y in _data():
        x = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
        correct += int(model(x + 0.3 * grad.sign()).argmax(1).eq(y).sum())
    assert ev.accuracy_under_fgsm(model, _data(), 0.3) == pytest.approx(correct / 64)
    assert ev.accuracy_under_fgsm(model, _data(), 0.3) <= clean
