"""The training loop: masked loss, clipping, validation perplexity, early stopping.

Written once here so every notebook trains the same way, for a set number of epochs::

    history = train(model, train_loader, valid_loader, epochs=10)
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .batching import Batch
from .checks import (
    is_finite_number,
    numpy_scalars_to_python,
    whole_number,
    whole_number_or_none,
)
from .decoding import evaluation_mode
from .keys import KEY_ONLY_WHEN_SET, key_fields
from .vocab import PAD_INDEX


def select_device(preferred: str | torch.device | None = None) -> torch.device:
    """``cuda`` when a GPU is available (``torch.cuda.is_available()`` — *called*: the
    article tested the bare function object, which is always truthy), else ``cpu``.
    ``preferred`` (or ``$PAYING_ATTENTION_DEVICE``) overrides; a device that does not
    exist here is a ``ValueError`` saying so, before anything is loaded or trained
    (``"cuda"`` without a GPU, ``"mps"`` off a Mac, and ``"meta"``, whose tensors hold no
    values to train or decode)."""
    preferred = preferred or os.environ.get("PAYING_ATTENTION_DEVICE")
    if not preferred:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preferred)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {preferred!r}: use cpu, cuda or cuda:<index>") from None
    if device.type == "meta":
        raise ValueError(
            f"device {preferred!r} holds no values to train or decode: use cpu or cuda"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device {preferred!r} was asked for, but torch.backends.mps.is_available() is "
            "False (Apple's GPUs only); use cpu"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {preferred!r} was asked for, but torch.cuda.is_available() is False "
                f"(PyTorch {torch.__version__}: a CPU-only build, or no GPU visible); use cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {preferred!r} was asked for, but only {torch.cuda.device_count()} "
                "GPU(s) are visible"
            )
    return device


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch so a CPU run repeats exactly.

    What "exactly" means: on the same CPU with the same number of PyTorch threads
    (``torch.get_num_threads()``), a run is bit-identical, however busy the machine is.
    A different thread count or CPU (another SIMD instruction set, another BLAS kernel)
    sums floating-point numbers in another order, so losses differ in the last digits and
    the difference grows a little over training; ``results/reproducibility.json`` measures
    by how much.
    """
    seed = whole_number("seed", seed, least=0)  # 1.5 met NumPy's bare TypeError
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def sequence_loss(
    logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy over real target tokens only.

    Args:
        logits: ``(B, T, V)``; target: ``(B, T)`` with ``<pad>`` where nothing is to predict.
        reduction: ``"mean"`` per real token (an error where there is none), or ``"sum"``.

    Padding is ignored (``ignore_index``): otherwise a model would be rewarded for
    predicting ``<pad>`` after every short sentence in a batch.
    """
    if logits.shape[:2] != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match target {tuple(target.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f'reduction must be "mean" or "sum", got {reduction!r}')
    if reduction == "mean" and not bool((target != PAD_INDEX).any()):
        raise ValueError("the target holds no real token (only <pad>): its mean loss is undefined")
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        target.reshape(-1),
        ignore_index=PAD_INDEX,
        reduction=reduction,
    )


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    valid_loss: float
    valid_perplexity: float
    seconds: float
    target_tokens_per_second: float


@dataclass
class TrainingHistory:
    """Per-epoch figures; ``to_frame()`` gives a pandas table."""

    epochs: list[EpochRecord] = field(default_factory=list)
    stopped_by_budget: bool = False
    stopped_early: bool = False
    best_epoch: int | None = None

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([record.__dict__ for record in self.epochs]).set_index("epoch")

    @property
    def total_seconds(self) -> float:
        return sum(record.seconds for record in self.epochs)

    @property
    def best_valid_loss(self) -> float:
        return min(record.valid_loss for record in self.epochs)

    def to_dict(self) -> dict:
        return {
            "epochs": [record.__dict__ for record in self.epochs],
            "stopped_by_budget": self.stopped_by_budget,
            "stopped_early": self.stopped_early,
            "best_epoch": self.best_epoch,
        }

    @classmethod
    def from_dict(cls, values: dict) -> TrainingHistory:
        return cls(
            [EpochRecord(**record) for record in values["epochs"]],
            values["stopped_by_budget"],
            values.get("stopped_early", False),
            values.get("best_epoch"),
        )


@dataclass
class TrainSettings:
    """The training settings that, with the model config and data, determine a model.

    Training length is ``epochs`` (optionally cut short by early stopping on the
    validation loss), never wall-clock time. ``time_budget`` exists only for the
    command line's explicit ``--time-budget``; no notebook or recipe sets it.
    """

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    clip: float = 1.0
    teacher_forcing_ratio: float = 1.0
    time_budget: float | None = None
    seed: int = 0
    label_smoothing: float = 0.0
    lr_decay: float | None = None
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.0
    # Added with the Transformer (notebook 08); see helpers.keys.KEY_ONLY_WHEN_SET.
    warmup_steps: int | None = field(default=None, metadata=KEY_ONLY_WHEN_SET)
    adam_beta2: float = field(default=0.999, metadata=KEY_ONLY_WHEN_SET)

    def __post_init__(self) -> None:
        numpy_scalars_to_python(self)
        # Checked when made, as ModelConfig is: batch_size="8" failed later on a bare
        # comparison, and epochs=0 passed until train() was called.
        self.batch_size = whole_number("batch_size", self.batch_size)
        self.seed = whole_number("seed", self.seed, least=0)
        _check_optimisation_numbers(
            self.learning_rate, self.clip, self.lr_decay, self.early_stopping_min_delta
        )
        _check_loop_numbers(
            self.epochs,
            self.time_budget,
            self.early_stopping_patience,
            self.warmup_steps,
            self.lr_decay,
            self.teacher_forcing_ratio,
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def key_dict(self) -> dict[str, Any]:
        """What a cache key hashes (the later-added fields only when set)."""
        return key_fields(self)

    def loop_arguments(self) -> dict[str, Any]:
        """The keyword arguments of :func:`train` these settings fix
        (batch size and seed shape the data loader instead)."""
        return {
            key: value for key, value in self.to_dict().items() if key not in ("batch_size", "seed")
        }


def warmup_inverse_sqrt(step: int, warmup_steps: int) -> float:
    r"""The Transformer's learning-rate factor at optimiser step ``step`` (1-based):
    ``min(step / warmup, sqrt(warmup / step))`` — a linear rise to 1 at ``warmup``,
    then :math:`\propto 1/\sqrt{step}`. Vaswani et al.'s eq. 3 is
    :math:`d^{-0.5} \min(step^{-0.5}, step \cdot warmup^{-1.5})`, the same curve
    scaled so that its peak is :math:`(d \cdot warmup)^{-0.5}`; here the peak is the
    ``learning_rate`` it multiplies."""
    return min(step / warmup_steps, math.sqrt(warmup_steps / step))


def amp_by_default(device: torch.device) -> bool:
    """Whether :func:`train` uses bf16 autocast when not told: on a GPU, yes (bf16 tensor
    cores, and the same exponent range as float32, so no loss scaling); on a CPU, no
    (without bf16 instructions it runs slower, and it would change every trained number
    the notebooks print)."""
    return device.type == "cuda"


def _autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device``: the GPU default, which the CPU also runs (slowly), so
    that the tests exercise the mixed-precision path on machines without a GPU."""
    if enabled:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def _budget_spent(started: float, budget: float, synchronise: bool, device: torch.device) -> bool:
    spent = time.perf_counter() - started > budget
    if not synchronise:
        return spent
    flag = torch.tensor([float(spent)], device=device)  # gloo wants CPU tensors, nccl GPU ones
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _global_token_count(local_tokens: int, world_size: int, device: torch.device):
    """The DDP loss divisor: all processes' real tokens of this step, divided by the world
    size (DDP's gradient averaging divides by it again)."""
    # torch.full, not torch.tensor: the value travels as a kernel argument, where
    # torch.tensor would copy it from host memory, a copy a GPU makes the host wait for.
    count = torch.full((), float(local_tokens), device=device)
    dist.all_reduce(count)  # a collective, but no host sync: the divisor stays a tensor
    return count / world_size


def batch_loss(
    model: nn.Module,
    batch: Batch,
    teacher_forcing_ratio: float = 1.0,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of ``model`` on a batch (already on its device), real tokens only.

    The output layer — a softmax over the whole target vocabulary, the most expensive
    part of a step — is computed only where the target is not padding
    (``Seq2Seq(..., output_positions=batch.target_positions)``), for training and
    validation alike. Those positions were found on the CPU when the batch was made, so
    on a GPU nothing here waits for the device.
    """
    real = batch.target_positions  # (N,) flat indices of the real target tokens
    output = model(
        batch.source, batch.source_lengths, batch.decoder_input, teacher_forcing_ratio, real
    )
    return smoothed_cross_entropy(
        output.logits.float(),
        batch.decoder_target.flatten().index_select(0, real),
        label_smoothing,
        reduction,
    )


def smoothed_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy against a label-smoothed target that never puts mass on ``<pad>``.

    Args:
        logits: ``(N, V)``; target: ``(N,)`` real tokens (no ``<pad>``).
        label_smoothing: :math:`\\varepsilon`. The target distribution gives the gold
            token :math:`1 - \\varepsilon` and spreads :math:`\\varepsilon` evenly over
            the other :math:`V - 2` tokens, ``<pad>`` excluded (as OpenNMT-py and
            joeynmt do): ``<pad>`` is never a word to predict, so a smoothed model
            should not learn to give it probability. (``F.cross_entropy``'s own
            ``label_smoothing`` spreads over all :math:`V` tokens, ``<pad>`` included.)
        reduction: ``"mean"`` (an error for ``N = 0``) or ``"sum"`` over the ``N`` tokens.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
    # Checked on shapes only, so the training loop never waits for the device here.
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be (N, V) and target (N,), got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}"
        )
    if reduction not in ("mean", "sum"):  # "none" would sum when smoothing, not without
        raise ValueError(f'reduction must be "mean" or "sum", got {reduction!r}')
    if reduction == "mean" and target.numel() == 0:
        raise ValueError("there are no target tokens: their mean loss is undefined")
    if label_smoothing == 0.0:
        return F.cross_entropy(logits, target, reduction=reduction)
    log_probs = F.log_softmax(logits, dim=-1)
    gold = log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
    # Sum of log-probabilities over every token except <pad> and the gold one.
    others = log_probs.sum(-1) - log_probs[:, PAD_INDEX] - gold
    per_token = -(1.0 - label_smoothing) * gold - label_smoothing / (logits.size(-1) - 2) * others
    return per_token.mean() if reduction == "mean" else per_token.sum()


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, loader: DataLoader, device: torch.device | None = None, amp: bool = False
) -> float:
    """Mean cross-entropy per real target token over ``loader`` (teacher forcing on).

    The model is evaluated in eval mode (no dropout) and left in the mode it came in.
    An empty loader is an error, not a perfect loss of 0.
    """
    device = device or next(model.parameters()).device
    total = torch.zeros((), device=device, dtype=torch.float64)
    tokens = 0
    with evaluation_mode(model):
        for batch in loader:
            _check_is_batch(batch, "loader")
            tokens += batch.target_token_count  # counted on the CPU copy: no device sync
            batch = batch.to(device, non_blocking=True)
            with _autocast(device, amp):
                total += batch_loss(model, batch, reduction="sum").double()
    if tokens == 0:
        raise ValueError(
            "the evaluation data holds no target tokens (an empty validation split?): "
            "a loss over nothing would read as a perfect score"
        )
    return float(total) / tokens


def _check_is_batch(batch: object, name: str) -> None:
    if not isinstance(batch, Batch):
        raise TypeError(
            f"{name} must yield Batch objects (a DataLoader from task.loaders() or "
            f"make_loader()), got a {type(batch).__name__}: a dataset, not a loader?"
        )


def _total_batches(loader: DataLoader, epochs: int) -> int | None:
    try:
        return epochs * len(loader)
    except TypeError:  # a sampler without a length: the bar then counts without an ETA
        return None


def _check_loop_numbers(
    epochs: int,
    time_budget: float | None,
    early_stopping_patience: int | None,
    warmup_steps: int | None,
    lr_decay: float | None,
    teacher_forcing_ratio: float,
) -> None:
    """Refuse a training length or schedule that makes no sense: 1.5 epochs failed inside
    range(), a NaN time budget was never spent, and a negative one read as spent."""
    whole_number("epochs", epochs)
    whole_number_or_none("early_stopping_patience", early_stopping_patience)
    if time_budget is not None and not (is_finite_number(time_budget) and time_budget >= 0):
        # (0 is allowed: one batch, then stop, as a test of the stop itself)
        raise ValueError(
            f"time_budget must be a finite number of seconds >= 0, got {time_budget!r}"
        )
    if whole_number_or_none("warmup_steps", warmup_steps) is not None and lr_decay:
        raise ValueError(
            f"warmup_steps ({warmup_steps}) and lr_decay ({lr_decay}) are two schedules of the "
            "learning rate: give one or the other"
        )
    if not (is_finite_number(teacher_forcing_ratio) and 0 <= teacher_forcing_ratio <= 1):
        raise ValueError(f"teacher_forcing_ratio must lie in [0, 1], got {teacher_forcing_ratio!r}")


def _check_optimisation_numbers(
    learning_rate: float, clip: float, lr_decay: float | None, min_delta: float
) -> None:
    """Refuse numbers that train without complaint but make no sense: a clip of -1 turns
    descent into ascent, 0 freezes the weights, and NaN or inf anywhere poisons them."""

    if not (
        is_finite_number(learning_rate) and learning_rate >= 0
    ):  # 0: frozen weights, as in a test
        raise ValueError(f"learning_rate must be a finite number >= 0, got {learning_rate!r}")
    if not (is_finite_number(clip) and clip > 0):
        raise ValueError(
            f"clip (the gradient-norm limit) must be a finite number > 0, got {clip!r}"
        )
    if lr_decay is not None and not (is_finite_number(lr_decay) and 0 < lr_decay <= 1):
        raise ValueError(
            f"lr_decay (the factor per epoch) must lie in (0, 1], or be None, got {lr_decay!r}"
        )
    if not (is_finite_number(min_delta) and 0 <= min_delta < 1):
        raise ValueError(
            f"early_stopping_min_delta (a relative gain) must lie in [0, 1), got {min_delta!r}"
        )


def make_adam(model: nn.Module, learning_rate: float, beta2: float = 0.999) -> torch.optim.Adam:
    """The series' optimiser: Adam (Kingma and Ba 2015) with :math:`\\beta_1 = 0.9`.

    ``foreach=True`` updates all parameters with one call per operation instead of a
    Python loop over them, as torch already does on a GPU. On a CPU that is about 15%
    less time per Adam step on notebook 04's model (4.0 against 4.7 ms), with the same
    arithmetic in the same order: the weights come out bit for bit as the loop's
    (``tests/test_training.py``). Not ``fused=True``: its CPU kernel is faster still but
    rounds differently, so every trained number in the series would move.
    """
    return torch.optim.Adam(model.parameters(), lr=learning_rate, betas=(0.9, beta2), foreach=True)


def train(
    model: nn.Module,
    train_loader: DataLoader,
    valid_loader: DataLoader | None = None,
    epochs: int = 10,
    learning_rate: float = 1e-3,
    clip: float = 1.0,
    teacher_forcing_ratio: float = 1.0,
    time_budget: float | None = None,
    device: torch.device | str | None = None,
    amp: bool | None = None,
    progress: bool | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    label_smoothing: float = 0.0,
    lr_decay: float | None = None,
    early_stopping_patience: int | None = None,
    early_stopping_min_delta: float = 0.0,
    warmup_steps: int | None = None,
    adam_beta2: float = 0.999,
    synchronise_budget: bool | None = None,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
    description: str = "train",
    history: TrainingHistory | None = None,
) -> TrainingHistory:
    """Train ``model`` with Adam for a set number of epochs; return the per-epoch history.

    The amount of training is fixed by ``epochs`` (and, optionally, early stopping on the
    validation loss), never by the clock, so a slow laptop, Binder or a busy machine gets
    the same model as a fast one — only later. With the same seed, the same thread count
    and the same CPU, the run repeats bit for bit.

    Args:
        epochs: the most epochs to run.
        clip: gradient-norm clipping threshold (RNNs' gradients occasionally explode).
        teacher_forcing_ratio: share of steps fed the gold previous token.
        time_budget: **opt-in, command line only**: seconds after which training stops
            (after the batch that crosses it, then validates). A run stopped this way
            depends on the machine's speed, so nothing the series reports uses it.
        amp: bf16 autocast (default: on when the device is CUDA; a CPU runs it too, slowly).
        progress: one tqdm bar over the whole run, with an ETA (default: yes, unless the
            environment variable ``PAYING_ATTENTION_PROGRESS`` is ``0``, as when the
            notebooks are executed for committing, so their outputs hold no stale bars).
        label_smoothing: spread this much probability mass over the other tokens,
            ``<pad>`` excluded, in the training loss (Szegedy et al. 2016; see
            :func:`smoothed_cross_entropy`); the validation loss stays plain.
        lr_decay: multiply the learning rate by this after every epoch.
        warmup_steps: the Transformer's schedule (Vaswani et al. 2017, eq. 3): the
            learning rate rises linearly for this many optimiser steps, peaks at
            ``learning_rate``, then falls as the inverse square root of the step
            (:func:`warmup_inverse_sqrt`). Not combined with ``lr_decay``.
        adam_beta2: Adam's :math:`\beta_2` (0.98 in the Transformer paper, 0.999 by default).
        early_stopping_patience: stop when the validation loss has not improved for this
            many epochs, and put back the weights of the best epoch (needs a
            ``valid_loader``). ``None``: run all ``epochs`` and keep the last weights.
        early_stopping_min_delta: the relative improvement that counts (``0.005``: the
            validation loss must fall by 0.5% of the best so far), as Keras' ``min_delta``;
            smaller gains are treated as convergence.
        synchronise_budget: under DistributedDataParallel, agree across processes
            on when the time budget is spent (otherwise one rank could stop while the
            others wait for it forever). Default: on whenever a process group is
            initialised.
        description: names the run on its progress bar (e.g. the model's name).
        history: the history of an interrupted run to continue (``--resume``): training
            goes on from the epoch after its last one, up to ``epochs``. The caller
            restores the model, the ``optimizer`` (its state holds the decayed learning
            rate), the random state and the sampler's epoch; see ``helpers.train``.

    Under DistributedDataParallel each process sums its share of a global batch, and the
    sum is divided by the token count of the *whole* global batch (all-reduced, without a
    host sync); DDP then averages the gradients over processes, so multiplying by the
    world size makes the step exactly the single-process step on the global batch
    (a mean of each rank's own mean would weight the tokens of short shards more).
    """
    _check_optimisation_numbers(learning_rate, clip, lr_decay, early_stopping_min_delta)
    _check_loop_numbers(
        epochs, time_budget, early_stopping_patience, warmup_steps, lr_decay, teacher_forcing_ratio
    )
    if early_stopping_patience is not None and valid_loader is None:
        raise ValueError("early stopping needs a valid_loader")
    if valid_loader is not None and len(valid_loader) == 0:  # said now, not after an epoch
        raise ValueError("valid_loader holds no batches (an empty validation split?)")
    if len(train_loader) == 0:
        raise ValueError("train_loader holds no batches (an empty training split?)")
    device = select_device(device)  # "cuda" without a GPU: a ValueError, not an AssertionError
    if progress is None:
        progress = os.environ.get("PAYING_ATTENTION_PROGRESS", "1") != "0"
    model.to(device)
    amp = amp_by_default(device) if amp is None else amp
    if optimizer is not None:
        optimised = {
            id(parameter) for group in optimizer.param_groups for parameter in group["params"]
        }
        if not any(id(parameter) in optimised for parameter in model.parameters()):
            # It stepped other weights: the model trained nothing, and the history looked normal.
            raise ValueError(
                "optimizer holds none of the model's parameters (was it made for another "
                "model?): make it with make_adam(model, ...) after the model is built"
            )
    optimizer = optimizer or make_adam(model, learning_rate, adam_beta2)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, lr_decay) if lr_decay else None
    history = TrainingHistory(list(history.epochs)) if history is not None else TrainingHistory()
    first_epoch = len(history.epochs) + 1
    if first_epoch > 1 and early_stopping_patience is not None:
        raise ValueError("continuing a run is not supported with early stopping")
    world_size = _world_size()
    if synchronise_budget is None:
        synchronise_budget = world_size > 1
    started = time.perf_counter()
    best_state: dict[str, torch.Tensor] | None = None
    epochs_without_improvement = 0
    # One bar for the whole run: its ETA is the time left for *all* epochs.
    bar = tqdm(
        total=_total_batches(train_loader, epochs - first_epoch + 1),
        desc=description,
        unit="batch",
        disable=not progress,
        mininterval=1.0,  # one refresh a second is plenty, and cheap in a notebook
    )
    stop_reason = ""
    # Steps already taken by the run being continued (the warm-up schedule counts them):
    # whole epochs, since a run is saved, and so continued, only at the end of one.
    optimizer_steps = (first_epoch - 1) * len(train_loader) if first_epoch > 1 else 0
    for epoch in range(first_epoch, epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        token_count = 0
        for batch_number, batch in enumerate(train_loader):
            _check_is_batch(batch, "train_loader")
            real_tokens = batch.target_token_count  # counted on the CPU copy: no device sync
            batch: Batch = batch.to(device, non_blocking=True)
            with _autocast(device, amp):
                if world_size == 1:
                    loss = batch_loss(model, batch, teacher_forcing_ratio, label_smoothing)
                    summed = loss.detach() * real_tokens
                else:
                    summed = batch_loss(
                        model, batch, teacher_forcing_ratio, label_smoothing, reduction="sum"
                    )
                    loss = summed / _global_token_count(real_tokens, world_size, device)
                    summed = summed.detach()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
            optimizer_steps += 1
            if warmup_steps is not None:
                rate = learning_rate * warmup_inverse_sqrt(optimizer_steps, warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = rate
            optimizer.step()
            # Accumulate on the device; reading .item() every batch would stall a GPU.
            loss_sum += summed
            token_count += real_tokens
            bar.update()
            if progress and batch_number % 50 == 0:
                bar.set_postfix_str(
                    f"epoch {epoch}/{epochs}, loss {float(loss_sum) / max(token_count, 1):.3f}"
                )
            if time_budget is not None and _budget_spent(
                started, time_budget, synchronise_budget, device
            ):
                history.stopped_by_budget = True
                break
        if scheduler is not None:
            scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - epoch_start
        core = getattr(model, "module", model)  # validate the bare model, not a DDP wrapper
        valid_loss = (
            evaluate_loss(core, valid_loader, device, amp)
            if valid_loader is not None
            else float("nan")
        )
        record = EpochRecord(
            epoch=epoch,
            train_loss=float(loss_sum) / max(token_count, 1),
            valid_loss=valid_loss,
            valid_perplexity=math.exp(valid_loss) if not math.isnan(valid_loss) else float("nan"),
            seconds=train_seconds,
            target_tokens_per_second=token_count / max(train_seconds, 1e-9),
        )
        if not math.isfinite(record.train_loss):  # read once per epoch anyway: no extra sync
            raise FloatingPointError(
                f"the training loss became {record.train_loss} in epoch {epoch}: the weights "
                "diverged (a learning rate too high?). The run stops before this epoch is recorded "
                "or saved"
            )
        history.epochs.append(record)
        if on_epoch_end is not None:
            on_epoch_end(record)
        if history.stopped_by_budget:
            stop_reason = f"stopped by the {time_budget:g} s time budget in epoch {epoch}"
            break
        if early_stopping_patience is not None:
            previous_best = min((r.valid_loss for r in history.epochs[:-1]), default=math.inf)
            if valid_loss < previous_best:  # keep the best weights, however small the gain
                history.best_epoch = epoch
                best_state = {k: v.detach().clone() for k, v in core.state_dict().items()}
            if valid_loss < previous_best * (1 - early_stopping_min_delta):
                epochs_without_improvement = 0
            else:
                epochs_without_improvement += 1
                if epochs_without_improvement >= early_stopping_patience:
                    history.stopped_early = True
                    stop_reason = (
                        f"stopped early after epoch {epoch}: validation loss no better "
                        f"for {early_stopping_patience} epoch(s); best was epoch {history.best_epoch}"
                    )
                    break
    if best_state is not None and history.best_epoch != len(history.epochs):
        core.load_state_dict(best_state)  # the weights of the best validation epoch
    if stop_reason:
        # End the bar at its own position, so it closes as finished (not as a red,
        # broken bar) and says why it ended before its total.
        bar.total = bar.n
        bar.set_postfix_str(stop_reason)
    bar.close()
    model.eval()  # trained: hand it back ready to evaluate (dropout off)
    return history
