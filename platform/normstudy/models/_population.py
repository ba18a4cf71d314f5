"""Population normalization (001, Sect. 2): normalize with statistics of a fixed training subset.

Each ``NormLayer`` under PN keeps ``population_mean`` / ``population_var`` buffers (so they are
in the state dict and survive a resume) and its ``statistics`` stage returns them in training
and evaluation alike: no batch noise, and the statistics are constants for autograd.

Estimation runs without gradients in eval mode (no dropout or noise stages), over the subset
in chunks. ``layerwise``: one pass over the subset per layer, in network order, stopped at that
layer, so every layer sees the inputs produced with the final population statistics of the
layers before it; the result equals the exact population mean and (biased) variance of each
layer's input. ``one_pass``: a single pass; each layer accumulates its moments chunk by chunk
and normalizes every chunk with its freshest estimate (an approximation whenever there is more
than one chunk; with one chunk it is exact).
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import nn

from normstudy.models._norm import NormLayer, channel_view, reduce_dims, to_norm_layers


def population_statistics(layer: NormLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's stored population mean/variance, in training and in evaluation mode."""
    mean, var = layer.get_buffer("population_mean"), layer.get_buffer("population_var")
    return channel_view(mean, x), channel_view(var, x)


def install_population_norm(model: nn.Module, owner: str) -> list[NormLayer]:
    """Turn every BN (not the input norm) into a PN layer; idempotent. Returns them in order.

    ``owner`` claims the ``statistics`` stage and the ``normalize`` flags (PN standardizes fully,
    so mean-only / variance-only normalization on the same layer is a conflict).
    """
    layers = []
    for _, layer in to_norm_layers(model):
        layer.claim("statistics", owner)
        layer.claim("normalize", owner)
        if "population_mean" not in dict(layer.named_buffers(recurse=False)):
            like = layer.weight if layer.weight is not None else layer.running_mean
            device = like.device if like is not None else None
            zeros = torch.zeros(layer.num_features, device=device)
            layer.register_buffer("population_mean", zeros)
            layer.register_buffer("population_var", torch.ones_like(zeros))
        layer.statistics = population_statistics
        layers.append(layer)
    return layers


@dataclasses.dataclass
class Moments:
    """Per-channel count, mean and sum of squared deviations, merged chunk by chunk (float64)."""

    n: int = 0
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        dims = reduce_dims(x)
        x = x.detach().double()
        n = x.numel() // x.shape[1]
        mean = x.mean(dim=dims)
        m2 = (x - channel_view(mean, x)).pow(2).sum(dim=dims)
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        total = self.n + n  # Chan et al.'s parallel update
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.pow(2) * (self.n * n / total)
        self.n = total

    def var(self) -> torch.Tensor:
        assert self.m2 is not None
        return self.m2 / self.n


class _Stop(Exception):
    """Ends a forward pass once the layer being estimated has seen its input."""


def _store(layer: NormLayer, moments: Moments) -> None:
    assert moments.mean is not None
    mean, var = layer.get_buffer("population_mean"), layer.get_buffer("population_var")
    mean.copy_(moments.mean.to(mean.dtype))
    var.copy_(moments.var().to(var.dtype))


def _estimate_layerwise(
    model: nn.Module, layers: list[NormLayer], chunks: list[torch.Tensor]
) -> None:
    for layer in layers:
        moments = Moments()

        def record(
            _: NormLayer, x: torch.Tensor, moments: Moments = moments
        ) -> tuple[torch.Tensor, torch.Tensor]:
            moments.add(x)
            raise _Stop

        layer.statistics = record
        try:
            for chunk in chunks:
                with contextlib.suppress(_Stop):
                    model(chunk)
        finally:
            layer.statistics = population_statistics
        _store(layer, moments)


def _estimate_one_pass(
    model: nn.Module, layers: list[NormLayer], chunks: list[torch.Tensor]
) -> None:
    moments = {id(layer): Moments() for layer in layers}

    def freshest(layer: NormLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = moments[id(layer)]
        m.add(x)
        assert m.mean is not None
        return channel_view(m.mean.to(x.dtype), x), channel_view(m.var().to(x.dtype), x)

    for layer in layers:
        layer.statistics = freshest
    try:
        for chunk in chunks:
            model(chunk)
    finally:
        for layer in layers:
            layer.statistics = population_statistics
    for layer in layers:
        _store(layer, moments[id(layer)])


@torch.no_grad()
def estimate_population(
    model: nn.Module,
    layers: list[NormLayer],
    x: torch.Tensor,
    *,
    chunk_size: int = 256,
    method: str = "layerwise",
) -> None:
    """Set the population statistics of ``layers`` from the samples ``x`` (see module doc)."""
    chunks = list(x.split(chunk_size))
    was_training = model.training
    model.eval()
    try:
        if method == "layerwise":
            _estimate_layerwise(model, layers, chunks)
        elif method == "one_pass":
            _estimate_one_pass(model, layers, chunks)
        else:
            raise ValueError(f"unknown population estimate {method!r}: layerwise or one_pass")
    finally:
        model.train(was_training)
