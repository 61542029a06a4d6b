"""Gaussian prompt aggregation (GPA, PromptSRC §3.3) as a reusable, checkpointable helper.

After epoch ``e`` (1-based, ``e = 1..N``) the running aggregate ``theta_GPA += g_e * theta_e`` is
updated with ``g_e ∝ N(e; mean, std^2)`` normalised over the N epochs; after the last epoch the
aggregate replaces the aggregated tensors. Which tensors are aggregated is the caller's choice
(PromptSRC: every prompt; CILMP: every prompt but the intervention / projection modules, which
keep their last-epoch values — ``usr922/cilmp:cilmp/trainers/cilmp.py`` ``state_dict_weighting``).

Sources: ``muzairkhattak/PromptSRC:trainers/promptsrc.py`` (``get_gauss``, ``state_dict_weighting``,
``state_dict_add``), ``usr922/cilmp:cilmp/trainers/cilmp.py``.

Deliberate differences: the weights are normalised in log space (a softmax of log-densities: the
same values, but no 0/0 when every density underflows, e.g. 5 demo epochs with mean 100, std 1);
only the named tensors are aggregated (the official code deep-copies the whole state dict); the
aggregate is exposed through :meth:`state_dict` / :meth:`load_state_dict` so a trainer can store it
in checkpoints (``extra_state``) and a resumed run keeps it.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

__all__ = ["gaussian_weights", "GaussianPromptAggregator"]


def gaussian_weights(n_epochs: int, mean: float, std: float) -> List[float]:
    """``[n_epochs]`` weights ``g_e ∝ exp(-(e - mean)^2 / (2 std^2))``, ``e = 1..n_epochs``, sum 1.

    Raises:
        ValueError: ``std <= 0`` or ``n_epochs < 1``.
    """
    if std <= 0 or n_epochs < 1:
        raise ValueError(f"GPA needs GPA_STD > 0 and MAX_EPOCH >= 1, got std={std}, epochs={n_epochs}")
    logs = torch.tensor([-0.5 * ((e - mean) / std) ** 2 for e in range(1, n_epochs + 1)], dtype=torch.float64)
    return torch.softmax(logs, dim=0).tolist()


class GaussianPromptAggregator:
    """Running Gaussian-weighted average of named parameters over epochs.

    Args:
        params: ``(name, parameter)`` pairs to aggregate (e.g. filtered ``named_parameters()``).
        n_epochs: number of epochs N.
        mean, std: Gaussian over the epoch index (1-based).

    Raises:
        ValueError: see :func:`gaussian_weights`; duplicate names.
    """

    def __init__(self, params: Iterable[Tuple[str, nn.Parameter]], n_epochs: int, mean: float, std: float):
        self.params: Dict[str, nn.Parameter] = {}
        for n, p in params:
            if n in self.params:
                raise ValueError(f"duplicate GPA tensor name '{n}'")
            self.params[n] = p
        self.weights = gaussian_weights(n_epochs, mean, std)
        self.n_epochs = n_epochs
        self._sum: Optional[Dict[str, torch.Tensor]] = None

    @torch.no_grad()
    def step(self, epoch: int) -> bool:
        """Add ``g_{epoch+1} * theta`` (``epoch`` 0-based); after the last epoch copy the aggregate
        into the parameters. Returns True when the aggregate was loaded.

        Raises:
            IndexError: ``epoch`` outside ``0 .. n_epochs - 1``.
        """
        if not 0 <= epoch < self.n_epochs:
            raise IndexError(f"GPA epoch {epoch} outside 0..{self.n_epochs - 1}")
        g = self.weights[epoch]
        if self._sum is None:
            self._sum = {n: p.detach().float() * g for n, p in self.params.items()}
        else:
            for n, p in self.params.items():
                self._sum[n] += g * p.detach().float()
        if epoch + 1 == self.n_epochs:
            for n, p in self.params.items():
                p.copy_(self._sum[n].to(p.dtype))
            return True
        return False

    def state_dict(self) -> dict:
        """The running aggregate on CPU (``None`` before the first epoch)."""
        return {"sum": None if self._sum is None else {n: v.cpu() for n, v in self._sum.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output (tensors moved to each parameter's device)."""
        s = (state or {}).get("sum")
        self._sum = None if s is None else {n: v.to(self.params[n].device) for n, v in s.items()}
