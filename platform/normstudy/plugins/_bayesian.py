"""Bayesian learning of the normalization scale's variance, with MC evaluation (000, Sect. 4).

No torch at module level (the registry is read by ``validate``): hooks import it themselves.

Each ``NormLayer``'s affine becomes y = x̂·S + b with S ~ q(S) = N(s, σ²): s is the layer's γ,
b its β (deterministic), σ = e^u (u < 0) or u + 1 (u ≥ 0) with u learnable (the parameter
``bayes_scale_u`` of the layer, in the ``bias`` optimizer group: no weight decay). The loss gains
(kl_factor/|D|)·Σ KL(q(S) ‖ N(1, prior_std²)). In eval mode S = s; ``val/nll_mc`` and
``test/nll_mc`` average the predictive probabilities over ``mc_samples`` draws of S.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from normstudy.plugins._base import Plugin, PluginOptions, StepOutputs, register_plugin
from normstudy.plugins._noise import NOISE_ORDER, norm_layers_of, reject_normalizer_free

if TYPE_CHECKING:
    import torch
    from torch import nn

    from normstudy.spec._model import StudySpec

MC_SEED = 0
"""Seed of the MC evaluation's draws (reproducible; the training RNG is left untouched)."""


@register_plugin
class BayesianScale(Plugin):
    """Stochastic scale S ~ N(s, σ²) after x̂ with a KL prior N(1, 10²) and MC eval (000)."""

    name = "bayesian_scale"
    order = NOISE_ORDER

    class Options(PluginOptions):
        per: Literal["channel", "layer"] = "channel"
        """One learnable σ per channel, or one per layer (S is drawn per channel either way)."""
        sigma_init: Annotated[float, Field(gt=0.0)] = 0.05
        """σ at the start (u = log σ_init below 1, σ_init − 1 above)."""
        prior_std: Annotated[float, Field(gt=0.0)] = 10.0
        """Standard deviation of the prior p(S) = N(1, prior_std²)."""
        kl_factor: Annotated[float, Field(ge=0.0)] = 1.0
        """Weight of Σ KL / |D| in the loss (|D|: training samples; 000 also used 0.1)."""
        mc_samples: Annotated[int, Field(ge=0)] = 10
        """T: draws of S averaged by the MC evaluation (0: no MC evaluation)."""

    options: Options

    @classmethod
    def check(cls, options: PluginOptions, spec: StudySpec) -> None:
        reject_normalizer_free(cls.name, spec)

    def patch_model(self, model: nn.Module) -> nn.Module:
        from normstudy.models._stochastic_layers import BayesianScale as Stage
        from normstudy.models._stochastic_layers import add_scale_u

        for name, layer in norm_layers_of(model, self.name):
            if layer.weight is None:
                raise ValueError(
                    f"plugins.bayesian_scale: normalization layer {name!r} has no affine "
                    "parameters (affine=False): there is no scale s to make stochastic"
                )
            layer.claim("affine", self.name)
            add_scale_u(layer, self.options.per, self.options.sigma_init)
            layer.affine_stage = Stage()
        return model

    def kl_sum(self, model: nn.Module) -> torch.Tensor:
        """Σ over layers and channels of KL(N(s, σ²) ‖ N(1, prior_std²))."""
        from normstudy.models._stochastic_layers import SCALE_U, bayesian_layers, kl_to_prior

        terms = []
        for _, layer, _ in bayesian_layers(model):
            assert layer.weight is not None
            u = getattr(layer, SCALE_U)
            terms.append(kl_to_prior(layer.weight, u, self.options.prior_std).sum())
        return sum(terms[1:], terms[0])

    def loss_terms(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        factor = self.options.kl_factor / max(self.ctx.train_size, 1)
        return {"kl": factor * self.kl_sum(out.model)}

    def _mc(self, model: nn.Module, which: str) -> dict[str, float]:
        import torch

        from normstudy.data import eval_batches
        from normstudy.models._stochastic_layers import mc_probabilities

        split = getattr(self.ctx.splits, which, None) if self.ctx.splits is not None else None
        if not self.options.mc_samples or split is None or len(split) == 0:
            return {}
        device = self.ctx.device or torch.device("cpu")
        batches = eval_batches(split, self.ctx.config.train.eval_batch_size, device=device)
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(MC_SEED)
            probs, targets = mc_probabilities(model, batches, self.options.mc_samples)
        targets = targets.to(probs.device)
        likelihood = probs.gather(1, targets[:, None]).squeeze(1)
        return {
            f"{which}/nll_mc": float(-torch.log(likelihood.clamp_min(1e-300)).mean()),
            f"{which}/acc_mc": float(probs.argmax(1).eq(targets).double().mean()),
        }

    def sigma_summary(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """Per layer: the mean σ and the mean σ/|s| (000 reports the latter per layer)."""
        import torch

        from normstudy.models._stochastic_layers import SCALE_U, bayesian_layers, sigma_of

        out = {}
        with torch.no_grad():
            for name, layer, _ in bayesian_layers(model):
                assert layer.weight is not None
                sigma = sigma_of(getattr(layer, SCALE_U)).expand(layer.num_features).double()
                ratio = sigma / layer.weight.double().abs().clamp_min(1e-12)
                out[name] = {"sigma": float(sigma.mean()), "sigma_over_s": float(ratio.mean())}
        return out

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        summary = self.sigma_summary(model)
        out = self._mc(model, "val")
        if summary:
            out["bayes/sigma_mean"] = sum(s["sigma"] for s in summary.values()) / len(summary)
        return out

    def test_metrics(self, model: nn.Module) -> dict[str, float]:
        return self._mc(model, "test")

    def artifacts(self, model: nn.Module) -> dict[str, str]:
        summary: dict[str, Any] = self.sigma_summary(model)
        return {"bayes_sigma_per_layer.json": json.dumps(summary, indent=1)}
