"""Training against a shortcut the audit flagged: source-balanced batches, group DRO, EnD.

The bias groups are the training records' ``source`` (the dataset an image comes from: the shortcut the audit's
source probe measures); a group is one (class x source) pair seen in the training split. ``debias: none`` builds
nothing here and the loop runs exactly as before.

- ``balanced``: every epoch draws each (class x source) group equally (:func:`balanced_order`), so a source cannot
  stand in for a class by being more frequent in it.
- ``group-dro``: online group DRO (Sagawa, Koh, Hashimoto, Liang, "Distributionally Robust Neural Networks for Group
  Shifts", ICLR 2020, Algorithm 1): exponentiated-gradient weights over the groups, step ``debias_eta``; the loss is
  the weighted sum of the groups' mean losses, so the worst group is weighted up. The weights are checkpointed.
- ``end``: EnD (Tartaglione, Barbano, Grangetto, "EnD: Entangling and Disentangling deep representations for bias
  correction", CVPR 2021): a regulariser on the normalised encoder features of a batch (:func:`end_regulariser`).

Whether a mitigation helped is for the re-audit (`unveil audit`) to say, never assumed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from unveil.training.config import ConfigError, TrainConfig
from unveil.training.data import ImageSet, TrainingDataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BiasGroups:
    """Per training image: its (class x source) group and its source (the bias), as integer codes."""

    group: torch.Tensor  # int64, N: index into ``names``
    bias: torch.Tensor  # int64, N: index into ``sources``
    names: tuple[str, ...]  # "class/source", sorted by class then source
    sources: tuple[str, ...]

    @property
    def confounded(self) -> bool:
        """Every class from its own single source (``COVID+/q``, ``COVID-/b``): source and class cannot be told
        apart in the training set, so ``balanced`` is class balancing, group DRO is DRO over the classes and EnD
        has no same-class pair across sources to entangle (only its disentangling term acts)."""
        classes = [name.rsplit("/", 1)[0] for name in self.names]
        return len(set(classes)) == len(classes) == len(self.sources) > 1


def bias_groups(train: ImageSet) -> BiasGroups:
    """The (class x source) groups of the training set (``records["source"]``, ``labels``)."""
    if "source" not in train.records:
        raise TrainingDataError("debiasing needs the training records' source column; the records have none")
    sources = train.records["source"].astype(str).to_numpy()
    names_of_sources, bias = np.unique(sources, return_inverse=True)
    labels = train.labels.numpy()
    pairs = sorted({(int(y), int(b)) for y, b in zip(labels, bias, strict=True)})
    code = {pair: index for index, pair in enumerate(pairs)}
    group = [code[(int(y), int(b))] for y, b in zip(labels, bias, strict=True)]
    names = tuple(f"{train.classes[y]}/{names_of_sources[b]}" for y, b in pairs)
    return BiasGroups(torch.as_tensor(group, dtype=torch.int64), torch.as_tensor(bias, dtype=torch.int64), names,
                      tuple(str(s) for s in names_of_sources))


def balanced_order(group: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One epoch of ``len(group)`` indices in which every group is drawn equally: ``n // G`` times each, and once
    more for ``n % G`` groups chosen at random. Within a group the draws walk through successive random
    permutations of its members (without replacement until every member was drawn), then the epoch is shuffled.
    Every draw comes from ``generator``, so an epoch's seed gives the same order (exact resume)."""
    count, n_groups = len(group), int(group.max()) + 1
    quota = torch.full((n_groups,), count // n_groups, dtype=torch.int64)
    quota[torch.randperm(n_groups, generator=generator)[:count % n_groups]] += 1
    drawn = []
    for index in range(n_groups):
        members = torch.nonzero(group == index).flatten()
        rounds = -(-int(quota[index]) // len(members))  # ceil: permutations needed to fill the quota
        walk = torch.cat([members[torch.randperm(len(members), generator=generator)] for _ in range(rounds)])
        drawn.append(walk[:int(quota[index])])
    order = torch.cat(drawn)
    return order[torch.randperm(len(order), generator=generator)]


class GroupDRO:
    """Online group DRO (Sagawa et al. 2020, Algorithm 1): ``q_g <- q_g exp(eta * loss_g)``, normalised, after
    every batch (from the batch's group mean losses, gathered over DDP ranks so every rank holds the same
    weights); the loss is ``sum_g q_g loss_g``. Starts uniform; :meth:`state_dict` goes in the checkpoint."""

    def __init__(self, n_groups: int, eta: float) -> None:
        self.eta = float(eta)
        self.weights = torch.full((n_groups,), 1.0 / n_groups, dtype=torch.float64)

    def loss(self, per_sample: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        """The robust loss of a batch (``per_sample`` losses, their ``group`` codes); updates the weights."""
        n_groups = len(self.weights)
        sums = torch.zeros(n_groups, dtype=per_sample.dtype, device=per_sample.device).index_add(0, group, per_sample)
        counts = torch.bincount(group, minlength=n_groups).to(per_sample.dtype)
        means = sums / counts.clamp_min(1)
        totals = torch.stack([sums.detach(), counts]).double()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(totals)
        seen = totals[1].cpu() > 0
        batch_means = (totals[0] / totals[1].clamp_min(1)).cpu()
        # Groups absent from the batch keep their weight (Sagawa et al.: their loss counts as 0 in the update).
        self.weights = self.weights * torch.exp(self.eta * torch.where(seen, batch_means, 0.0))
        self.weights = self.weights / self.weights.sum()
        return (self.weights.to(means.device, means.dtype) * means).sum()

    def state_dict(self) -> dict[str, Any]:
        return {"group_weights": self.weights.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        weights = state.get("group_weights")
        if weights is None or len(weights) != len(self.weights):
            raise ConfigError(f"the checkpoint holds no group DRO weights for {len(self.weights)} groups "
                              f"(got {None if weights is None else len(weights)}); use --no-resume")
        self.weights = torch.as_tensor(weights, dtype=torch.float64).clone()


def _pair_mask(same: torch.Tensor) -> torch.Tensor:
    """The pairs i > j of a boolean N x N relation (each unordered pair once, no self-pairs)."""
    return torch.tril(same, diagonal=-1)


def end_regulariser(features: torch.Tensor, target: torch.Tensor, bias: torch.Tensor, alpha: float,
                    beta: float) -> torch.Tensor:
    """EnD's term ``alpha * R_perp + beta * R_par`` on a batch of encoder ``features`` (B x D), written after
    Tartaglione, Barbano, Grangetto, CVPR 2021 (Eqs. 4-6), on the L2-normalised features' Gram matrix
    ``G_ij = cos(f_i, f_j)``, every unordered pair i != j once:

    - disentangle, ``R_perp = sum_b |sum_{pairs with b_i = b_j = b} G_ij| / M_perp``: features of images of one
      source are pushed towards orthogonal (cosine 0), so the source is not written in them;
    - entangle, ``R_par = -sum_{pairs with y_i = y_j, b_i != b_j} G_ij / M_par``: images of one class from different
      sources are pulled together (cosine towards 1).

    ``M_perp`` and ``M_par`` count the pairs; a term without pairs in the batch is 0."""
    normal = F.normalize(features.float().flatten(1), dim=1)
    gram = normal @ normal.T
    same_bias = bias[:, None] == bias[None, :]
    perp = gram.new_zeros(())
    perp_pairs = 0
    for value in torch.unique(bias):
        mask = _pair_mask(same_bias & (bias[:, None] == value))
        perp = perp + (gram * mask).sum().abs()
        perp_pairs += int(mask.sum())
    par_mask = _pair_mask((target[:, None] == target[None, :]) & ~same_bias)
    par_pairs = int(par_mask.sum())
    par = -(gram * par_mask).sum() / par_pairs if par_pairs else gram.new_zeros(())
    return alpha * (perp / perp_pairs if perp_pairs else perp) + beta * par


def per_sample_loss(config: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss of every image (B), whose mean is the loop's batch loss (focal: the mean over classes of
    MONAI's element-wise loss; cross-entropy: unreduced)."""
    if config.loss == "focal":
        from monai.losses import FocalLoss

        focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=config.focal_gamma, reduction="none")
        return lambda logits, labels: focal(logits.float(), labels[:, None]).flatten(1).mean(dim=1)
    return lambda logits, labels: F.cross_entropy(logits.float(), labels, reduction="none")


#: what each method reduces to when every class comes from its own source (BiasGroups.confounded)
CONFOUNDED_EFFECT = {"balanced": "source-balanced sampling is class-balanced sampling",
                     "group-dro": "group DRO is DRO over the classes",
                     "end": "EnD only disentangles images of one source (= one class); nothing is entangled"}


class Mitigation:
    """What the training loop asks of a mitigation (``config.debias`` other than ``none``): the epoch's order
    (``balanced`` only: :meth:`order`) and each batch's loss (:meth:`loss`, from the logits, the labels and the
    batch's indices into the training set); its state goes in the checkpoint."""

    def __init__(self, config: TrainConfig, train: ImageSet, model: torch.nn.Module,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], device: torch.device) -> None:
        self.config = config
        self.groups = bias_groups(train)
        if self.groups.confounded:
            log.warning("debias %s: every class of the training set comes from one source (%s): source and class "
                        "cannot be separated here, so %s", config.debias, ", ".join(self.groups.names),
                        CONFOUNDED_EFFECT[config.debias])
        self.reorders = config.debias == "balanced"
        self._group, self._bias = self.groups.group.to(device), self.groups.bias.to(device)
        self._loss_fn = loss_fn
        self._per_sample = per_sample_loss(config)
        self.dro = GroupDRO(len(self.groups.names), config.debias_eta) if config.debias == "group-dro" else None
        self._features: torch.Tensor | None = None
        if config.debias == "end":
            head = getattr(model, "head", None)
            if not isinstance(head, torch.nn.Module):
                raise ConfigError(f"debias end needs the model's encoder features (a `head` module); "
                                  f"{config.architecture} has none")
            head.register_forward_hook(self._keep_features)

    def _keep_features(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
        """Forward hook on the head: its input is the batch's encoder features (works through DDP's wrapper)."""
        self._features = inputs[0]

    def order(self, generator: torch.Generator) -> torch.Tensor:
        """The epoch's indices, every (class x source) group drawn equally."""
        return balanced_order(self.groups.group, generator)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The batch's training loss under the mitigation (``indices``: the batch's rows of the training set)."""
        if self.dro is not None:
            return self.dro.loss(self._per_sample(logits, labels), self._group[indices])
        loss = self._loss_fn(logits, labels)
        if self.config.debias == "end":
            if self._features is None:
                raise ConfigError("debias end: the model's head saw no features in this step")
            loss = loss + end_regulariser(self._features, labels, self._bias[indices], self.config.end_alpha,
                                          self.config.end_beta)
        return loss

    def describe(self) -> dict[str, Any]:
        """What the bundle records: the mitigation, its options, its groups (and group DRO's final weights)."""
        options: dict[str, Any] = {"debias": self.config.debias}
        if self.dro is not None:
            options["debias_eta"] = self.config.debias_eta
        if self.config.debias == "end":
            options.update(end_alpha=self.config.end_alpha, end_beta=self.config.end_beta)
        described: dict[str, Any] = {**options, "bias": "source", "groups": list(self.groups.names),
                                     "confounded": self.groups.confounded}
        if self.dro is not None:
            described["group_weights"] = [round(float(w), 6) for w in self.dro.weights]
        return described

    def state_dict(self) -> dict[str, Any]:
        return {"groups": list(self.groups.names), **(self.dro.state_dict() if self.dro else {})}

    def load_state_dict(self, state: dict[str, Any], where: str) -> None:
        """Restore from a checkpoint (``where``: its path), which must have been written over the same groups."""
        if list(state.get("groups") or []) != list(self.groups.names):
            raise ConfigError(f"{where}: checkpoint groups {state.get('groups')} are not this training set's "
                              f"{list(self.groups.names)}; use --no-resume")
        if self.dro is not None:
            self.dro.load_state_dict(state)


def mitigation(config: TrainConfig, train: ImageSet, model: torch.nn.Module,
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               device: torch.device) -> Mitigation | None:
    """The mitigation ``config.debias`` asks for, or None (``none``: the loop is unchanged)."""
    return None if config.debias == "none" else Mitigation(config, train, model, loss_fn, device)
