"""Stochastic ``NormLayer`` stages: noise after x̂ (000, 003) and a Bayesian stochastic scale (000).

Each stage is a small picklable callable ``(layer, x̂) -> tensor`` set on a ``NormLayer``
(``perturb`` list or ``affine_stage``); the plugins in ``normstudy.plugins._noise`` and
``_bayesian`` configure them. Random draws use torch's global RNG (seeded by the trial and
saved in its checkpoints); state that must survive a resume (the per-channel noise of
``noisy_bn``'s ``channel`` granularity, the scale parameter u of ``bayesian_scale``) lives in
the layer's state dict.

Shapes: ``xhat`` is (N, C, *spatial); "per sample and channel" noises are (N, C, 1, ...), drawn
once and shared by every spatial position (000: the noises are spatially correlated, like the
batch statistics they stand for); 003's noisy BN draws one value per activation, (N, C, *spatial).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from normstudy.models._norm import Affine, NormLayer, channel_view

NOISY_BN_SHIFT = "noisy_bn_shift"
NOISY_BN_SCALE = "noisy_bn_scale"
SCALE_U = "bayes_scale_u"
"""Name of the parameter u (σ = e^u for u < 0, u + 1 for u ≥ 0) registered on a NormLayer."""


def sample_channel_shape(x: torch.Tensor) -> tuple[int, ...]:
    """(N, C, 1, ...): one value per sample and channel, broadcast over spatial positions."""
    return (x.shape[0], x.shape[1], *([1] * (x.dim() - 2)))


def spatial_size(x: torch.Tensor) -> int:
    return math.prod(x.shape[2:])


def inverse_chi_scale(n: float, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """U = √n / χ_{n−1}: the law of σ/S when S² is the biased variance of n normal samples."""
    df = torch.full(shape, float(n - 1), device=device)
    return math.sqrt(n) * torch.rsqrt(torch.distributions.Chi2(df, validate_args=False).sample())


class GaussianNoise:
    """``noise`` (000, eq. 7): x̂ → (x̂ + V)·U, V ~ N(0, σ_V²), U ~ N(1, σ_U²) per sample and
    channel, in training mode only."""

    def __init__(self, sigma_u: float, sigma_v: float) -> None:
        self.sigma_u, self.sigma_v = sigma_u, sigma_v

    def __call__(self, layer: NormLayer, xhat: torch.Tensor) -> torch.Tensor:
        if not layer.training:
            return xhat
        shape = sample_channel_shape(xhat)
        v = torch.randn(shape, device=xhat.device, dtype=xhat.dtype) * self.sigma_v
        u = 1.0 + torch.randn(shape, device=xhat.device, dtype=xhat.dtype) * self.sigma_u
        return (xhat + v) * u


class BNLikeNoise:
    """``noise`` mode ``bn_like`` (000, Sect. 3.1): with n = k·z (reference batch k, spatial
    size z, the layer's own H·W when not given), V ~ N(0, 1/n) and U = √n / χ_{n−1}."""

    def __init__(self, batch: int, spatial: int | None) -> None:
        self.batch, self.spatial = batch, spatial

    def __call__(self, layer: NormLayer, xhat: torch.Tensor) -> torch.Tensor:
        if not layer.training:
            return xhat
        n = self.batch * (self.spatial or spatial_size(xhat))
        shape = sample_channel_shape(xhat)
        v = torch.randn(shape, device=xhat.device, dtype=xhat.dtype) / math.sqrt(n)
        u = inverse_chi_scale(n, shape, xhat.device).to(xhat.dtype)
        return (xhat + v) * u


class NoisyBNActivation:
    """``noisy_bn`` (003), the default: x̂ → (x̂ + a)·m with a ~ N(shift_mean, shift_std²) and
    m ~ exp(N(0, scale_std²)) (``lognormal``) or N(1, scale_std²) (``normal``) drawn i.i.d. for
    every activation (sample, channel, position) at every forward, in training mode only."""

    def __init__(self, shift_mean: float, shift_std: float, scale: str, scale_std: float) -> None:
        self.shift_mean, self.shift_std = shift_mean, shift_std
        self.scale, self.scale_std = scale, scale_std

    def __call__(self, layer: NormLayer, xhat: torch.Tensor) -> torch.Tensor:
        if not layer.training:
            return xhat
        a = torch.randn_like(xhat) * self.shift_std + self.shift_mean
        m = torch.randn_like(xhat) * self.scale_std
        m = m.exp() if self.scale == "lognormal" else m + 1.0
        return (xhat + a) * m


def noisy_bn_stage(layer: NormLayer, xhat: torch.Tensor) -> torch.Tensor:
    """``noisy_bn`` with ``granularity: channel``: x̂ → (x̂ + a)·m, with this step's
    per-channel a, m (one draw for the whole batch; the plugin redraws them), in training mode
    only."""
    if not layer.training:
        return xhat
    shift: torch.Tensor = getattr(layer, NOISY_BN_SHIFT)
    scale: torch.Tensor = getattr(layer, NOISY_BN_SCALE)
    return (xhat + channel_view(shift, xhat)) * channel_view(scale, xhat)


def add_noisy_bn_buffers(layer: NormLayer) -> None:
    """Per-channel a (0) and m (1), in the layer's state dict so a resume continues the step."""
    device = layer.running_mean.device if layer.running_mean is not None else None
    layer.register_buffer(NOISY_BN_SHIFT, torch.zeros(layer.num_features, device=device))
    layer.register_buffer(NOISY_BN_SCALE, torch.ones(layer.num_features, device=device))


# --- Bayesian scale ---------------------------------------------------------------------------


def sigma_of(u: torch.Tensor) -> torch.Tensor:
    """σ = e^u for u < 0, u + 1 for u ≥ 0: continuous, with |dσ/du| ≤ 1 and |d log σ/du| ≤ 1.

    The clamp keeps the unused branch finite, so its zero gradient never becomes 0·∞.
    """
    return torch.where(u < 0, torch.exp(u.clamp(max=0.0)), u + 1.0)


def log_sigma_of(u: torch.Tensor) -> torch.Tensor:
    """log σ computed from u directly (u for u < 0, log(u + 1) for u ≥ 0): finite even where
    e^u underflows to 0, with |d log σ/du| ≤ 1."""
    return torch.where(u < 0, u, torch.log1p(u.clamp(min=0.0)))


def u_for_sigma(sigma: float) -> float:
    """The inverse of ``sigma_of``: the u that gives ``sigma``."""
    return math.log(sigma) if sigma < 1.0 else sigma - 1.0


class BayesianScale(Affine):
    """``bayesian_scale`` (000, Sect. 4): y = x̂·S + b, S = s + σ·ε with ε ~ N(0, 1) per sample
    and channel (reparametrized, so gradients reach s and u); s is the layer's γ, b its β.

    S = s in eval mode, unless ``sample_in_eval`` is set (Monte Carlo evaluation). Its
    ``coefficients`` are those of the mean scale: (s, b).
    """

    name = "bayesian"

    def __init__(self) -> None:
        self.sample_in_eval = False

    def __call__(self, layer: NormLayer, xhat: torch.Tensor) -> torch.Tensor:
        assert layer.weight is not None and layer.bias is not None
        s, b = channel_view(layer.weight, xhat), channel_view(layer.bias, xhat)
        if not (layer.training or self.sample_in_eval):
            return xhat * s + b
        sigma = sigma_of(getattr(layer, SCALE_U))
        sigma = channel_view(sigma.expand(layer.num_features), xhat)
        eps = torch.randn(sample_channel_shape(xhat), device=xhat.device, dtype=xhat.dtype)
        return xhat * (s + sigma * eps) + b


def add_scale_u(layer: NormLayer, per: str, sigma_init: float) -> nn.Parameter:
    """Register u (one per channel, or one for the layer) on ``layer``, set so σ = sigma_init."""
    assert layer.weight is not None
    size = layer.num_features if per == "channel" else 1
    u = nn.Parameter(torch.full((size,), u_for_sigma(sigma_init), device=layer.weight.device))
    layer.register_parameter(SCALE_U, u)
    return u


def kl_to_prior(s: torch.Tensor, u: torch.Tensor, prior_std: float) -> torch.Tensor:
    """KL(N(s, σ²) ‖ N(1, prior_std²)) per channel, σ = σ(u) (u broadcast against s):
    log(prior_std/σ) + (σ² + (s − 1)²)/(2·prior_std²) − ½."""
    sigma, log_sigma = sigma_of(u), log_sigma_of(u)
    var_p = prior_std**2
    return math.log(prior_std) - log_sigma + (sigma**2 + (s - 1.0) ** 2) / (2 * var_p) - 0.5


def bayesian_layers(model: nn.Module) -> Iterator[tuple[str, NormLayer, BayesianScale]]:
    for name, module in model.named_modules():
        if isinstance(module, NormLayer) and isinstance(module.affine_stage, BayesianScale):
            yield name, module, module.affine_stage


@contextmanager
def sampling_in_eval(model: nn.Module) -> Iterator[None]:
    """Draw S ~ q(S) in eval mode too (BN running statistics, sampled scales), within the block."""
    stages = [stage for _, _, stage in bayesian_layers(model)]
    try:
        for stage in stages:
            stage.sample_in_eval = True
        yield
    finally:
        for stage in stages:
            stage.sample_in_eval = False


@torch.no_grad()
def mc_probabilities(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictive probabilities averaged over ``samples`` draws of the scales (eval mode):
    p̄(y|x) = (1/T) Σ_t softmax(f(x; S_t)) — probabilities, not logits, are averaged.

    Returns (probabilities (N, classes) in float64, targets). Draws use the global RNG, in
    the order sample t, then batch.
    """
    was_training = model.training
    model.eval()
    data = list(batches)
    total: list[torch.Tensor] = []
    try:
        with sampling_in_eval(model):
            for t in range(samples):
                for i, (x, _) in enumerate(data):
                    p = F.softmax(model(x).double(), dim=1)
                    if t == 0:
                        total.append(p)
                    else:
                        total[i].add_(p)
    finally:
        model.train(was_training)
    probs = torch.cat(total) / samples
    return probs, torch.cat([y for _, y in data])
