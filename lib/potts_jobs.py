r"""Chapter 2's independent masked-language-model trainings, run in worker processes.

The depth comparison of chapter 2 (claim 2.5) trains many models, each by
:func:`lib.potts.train_mlm_select_lr` from its own initial weights and batch order. An
:class:`MLMJob` names one such training by plain values (the model's class, sizes and seeds), so
that :func:`train_mlm_jobs` can send it to a worker process (:func:`lib.parallel.run_jobs`) and
rebuild the trained model here. Every job is seeded by its own fields, so the results do not depend
on where or in which order they run: with one torch thread they are bitwise those of the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .parallel import run_jobs
from .potts import (
    FactoredAttention,
    TrainResult,
    VanillaTransformer,
    _states,
    train_mlm_select_lr,
)

Tensor = torch.Tensor

__all__ = ["MLMJob", "make_mlm_model", "train_mlm_jobs"]


@dataclass(frozen=True)
class MLMJob:
    """One model of :func:`train_mlm_jobs`: its class and initial weights, its data and learning rates.

    ``kind``: ``"factored"`` (:class:`~lib.potts.FactoredAttention`) or ``"vanilla"``
    (:class:`~lib.potts.VanillaTransformer`), built with ``model_kwargs`` and initial weights drawn from
    ``torch.Generator().manual_seed(init_seed)``; ``train``: index of its training set in the
    stacked ``s_train``; ``lrs``: the peak learning rates tried (the best on validation is kept,
    :func:`~lib.potts.train_mlm_select_lr`); ``seed``: the seed of the batch order.
    """

    kind: str
    init_seed: int
    train: int
    lrs: tuple[float, ...]
    seed: int
    model_kwargs: tuple[tuple[str, object], ...] = ()


def make_mlm_model(
    kind: str, L: int, C_: int, *, init_seed: int, **model_kwargs
) -> nn.Module:
    """A fresh :class:`~lib.potts.FactoredAttention` (``kind="factored"``) or :class:`~lib.potts.VanillaTransformer`
    (``kind="vanilla"``) on ``L`` sites and ``C`` colours, initialised from ``init_seed``."""
    g = torch.Generator().manual_seed(int(init_seed))
    if kind == "factored":
        return FactoredAttention(L, C_, generator=g, **model_kwargs)
    if kind == "vanilla":
        return VanillaTransformer(L, C_, generator=g, **model_kwargs)
    raise ValueError(f"kind must be 'factored' or 'vanilla', got {kind!r}")


def _mlm_job(
    shared: tuple, job: MLMJob
) -> tuple[dict[str, Tensor], TrainResult, dict[float, float]]:
    s_train, s_val, C_, protocol, device = shared
    model, res, scores = train_mlm_select_lr(
        lambda: make_mlm_model(
            job.kind,
            s_train.shape[-1],
            C_,
            init_seed=job.init_seed,
            **dict(job.model_kwargs),
        ),
        s_train[job.train],
        s_val,
        lrs=job.lrs,
        seed=job.seed,
        device=device,
        **protocol,
    )
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, res, scores


def train_mlm_jobs(
    jobs: Sequence[MLMJob],
    s_train: Tensor,
    s_val: Tensor,
    C_: int,
    *,
    workers: int = 1,
    device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "models",
    **protocol,
) -> list[tuple[nn.Module, TrainResult, dict[float, float]]]:
    r"""Train every :class:`MLMJob` by :func:`~lib.potts.train_mlm_select_lr` (protocol ``**protocol`` of
    :func:`~lib.potts.train_mlm`) and return ``(model, TrainResult, {lr: validation loss})`` in job order.

    ``s_train`` ``(R, M, L)`` stacks the training sets the jobs index; ``s_val`` ``(N, L)`` is
    shared. ``workers > 1`` trains the jobs in that many processes (:func:`lib.parallel.run_jobs`,
    one torch thread each, CPU only): each job is seeded by its own ``init_seed`` and ``seed``, so
    the results are bitwise those of ``workers == 1`` with one torch thread (tested). The models
    come back on ``device``.
    """
    if not isinstance(s_train, torch.Tensor) or s_train.dim() != 3:
        raise ValueError(
            f"s_train must be a tensor (R, M, L) of training sets, got {getattr(s_train, 'shape', s_train)!r}"
        )
    s_train = _states(s_train.reshape(-1, s_train.shape[-1]), "s_train", C_).reshape(
        s_train.shape
    )
    s_val = _states(s_val, "s_val", C_)
    if s_val.shape[1] != s_train.shape[2]:
        raise ValueError(
            f"s_val must have L = {s_train.shape[2]} sites like s_train, got {tuple(s_val.shape)}"
        )
    if not jobs:
        raise ValueError("jobs is empty: give at least one MLMJob")
    dev = torch.device("cpu") if device is None else torch.device(device)
    if workers > 1 and dev.type != "cpu":
        raise ValueError(
            "workers > 1 trains on the CPU only; use workers=1 with a GPU device"
        )
    for i, job in enumerate(jobs):
        if not isinstance(job, MLMJob):
            raise TypeError(f"jobs[{i}] must be an MLMJob, got {type(job).__name__}")
        if not 0 <= job.train < s_train.shape[0]:
            raise ValueError(
                f"jobs[{i}].train = {job.train} is not an index of the {s_train.shape[0]} training sets"
            )
    out = run_jobs(
        _mlm_job,
        [(job,) for job in jobs],
        shared=(s_train, s_val, C_, protocol, dev),
        workers=workers,
        progress=progress,
        desc=desc,
    )
    models = []
    for job, (state, res, scores) in zip(jobs, out):
        model = make_mlm_model(
            job.kind,
            s_train.shape[-1],
            C_,
            init_seed=job.init_seed,
            **dict(job.model_kwargs),
        )
        model.load_state_dict(state)
        models.append((model.to(dev), res, scores))
    return models
