"""Batches for seq2seq training: a ``Dataset`` of index tensors, length bucketing, padding.

A batch pads every sentence to the longest one in it. Random batches of Tatoeba mix
2-word and 12-word sentences and waste most of their compute on padding;
:class:`BucketBatchSampler` groups sentences of similar length instead.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .checks import whole_number
from .vocab import PAD_INDEX, Vocabulary, reject_text


@dataclass
class Batch:
    """A padded batch.

    Attributes:
        source: ``(batch, src_len)`` source indices, right-padded with ``<pad>``.
        source_lengths: ``(batch,)`` real source lengths (on the CPU, as packing needs).
        source_mask: ``(batch, src_len)`` bool, True where a real token is.
        target: ``(batch, tgt_len + 1)`` ``<sos> y_1 … y_n <eos>`` padded; the decoder
            reads ``target[:, :-1]`` and learns to predict ``target[:, 1:]``.
        target_positions: ``(N,)`` where the ``N`` real tokens of ``decoder_target`` sit
            in its flattened ``(batch · tgt_len)`` positions, ascending. Found on the CPU
            when the batch is made, so that picking those positions on a GPU
            (``index_select``) has a known size: a boolean mask would make the GPU
            report how many it holds, a wait of the host on every batch.
    """

    source: torch.Tensor
    source_lengths: torch.Tensor
    source_mask: torch.Tensor
    target: torch.Tensor
    target_positions: torch.Tensor

    @property
    def decoder_input(self) -> torch.Tensor:
        return self.target[:, :-1]

    @property
    def decoder_target(self) -> torch.Tensor:
        return self.target[:, 1:]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Move to ``device``; lengths stay on the CPU for ``pack_padded_sequence``."""
        return Batch(
            source=self.source.to(device, non_blocking=non_blocking),
            source_lengths=self.source_lengths,
            source_mask=self.source_mask.to(device, non_blocking=non_blocking),
            target=self.target.to(device, non_blocking=non_blocking),
            target_positions=self.target_positions.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        """Called by ``DataLoader(pin_memory=True)`` so host→GPU copies can overlap."""
        return Batch(
            self.source.pin_memory(),
            self.source_lengths,
            self.source_mask.pin_memory(),
            self.target.pin_memory(),
            self.target_positions.pin_memory(),
        )

    @property
    def target_token_count(self) -> int:
        """Real target tokens to predict (``<eos>`` included, padding not); a shape, so
        reading it never waits for a GPU."""
        return self.target_positions.numel()


class TranslationDataset(Dataset):
    """Tokenised sentence pairs stored as index tensors.

    Args:
        source_sentences: tokenised source sentences.
        target_sentences: tokenised target sentences, one per source.
        source_vocab, target_vocab: the vocabularies to encode with.
    """

    def __init__(
        self,
        source_sentences: Sequence[Sequence[str]],
        target_sentences: Sequence[Sequence[str]],
        source_vocab: Vocabulary,
        target_vocab: Vocabulary,
    ) -> None:
        reject_text(source_sentences, "source_sentences")
        reject_text(target_sentences, "target_sentences")
        if len(source_sentences) != len(target_sentences):
            raise ValueError(
                f"{len(source_sentences)} source sentences but {len(target_sentences)} targets"
            )
        for index, (source, target) in enumerate(
            zip(source_sentences, target_sentences, strict=True)
        ):
            if not source or not target:
                raise ValueError(f"pair {index} has an empty sentence: {source!r} → {target!r}")
        self.sources = [
            torch.tensor(source_vocab.encode(sentence), dtype=torch.long)
            for sentence in source_sentences
        ]
        self.targets = [
            torch.tensor(
                target_vocab.encode(sentence, add_sos=True, add_eos=True), dtype=torch.long
            )
            for sentence in target_sentences
        ]

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sources[index], self.targets[index]

    @property
    def source_lengths(self) -> list[int]:
        return [len(source) for source in self.sources]

    @property
    def length_keys(self) -> list[tuple[int, int]]:
        """``(source length, target length)`` per pair: the bucketing sort key, so that
        both the source and the target side of a batch need little padding."""
        return [
            (len(source), len(target))
            for source, target in zip(self.sources, self.targets, strict=True)
        ]


def collate_batch(examples: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Batch:
    """Pad a list of ``(source, target)`` index tensors into a :class:`Batch`."""
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    sources, targets = zip(*examples, strict=True)
    source_lengths = torch.tensor([len(source) for source in sources], dtype=torch.long)
    source = torch.nn.utils.rnn.pad_sequence(
        list(sources), batch_first=True, padding_value=PAD_INDEX
    )
    target = torch.nn.utils.rnn.pad_sequence(
        list(targets), batch_first=True, padding_value=PAD_INDEX
    )
    source_mask = torch.arange(source.size(1))[None, :] < source_lengths[:, None]
    target_positions = (target[:, 1:] != PAD_INDEX).flatten().nonzero().squeeze(1)
    return Batch(source, source_lengths, source_mask, target, target_positions)


class BucketBatchSampler(Sampler[list[int]]):
    """Yields batches of indices whose sentences have similar lengths.

    Indices are shuffled, cut into pools of ``pool_batches`` batches, each pool is
    sorted by length and cut into batches, and the batches are shuffled again. This
    keeps padding small while every epoch still sees a different order.

    Args:
        lengths: a sortable length per example: an int, or a ``(source, target)`` tuple.
        batch_size: sentences per batch.
        shuffle: shuffle per epoch; False gives one fixed, length-sorted order.
        seed: base seed; epoch ``e`` uses ``seed + e`` so runs repeat exactly.
        pool_batches: how many batches' worth of examples are sorted together.
        drop_last: drop a final batch smaller than ``batch_size``.
    """

    def __init__(
        self,
        lengths: Sequence[int] | Sequence[tuple[int, int]],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        pool_batches: int = 50,
        drop_last: bool = False,
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = whole_number("batch_size", batch_size)
        self.shuffle = shuffle
        self.seed = seed
        # A pool of -1 batches made no batches at all, and 0 failed inside range().
        self.pool_batches = whole_number("pool_batches", pool_batches)
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_batches(self) -> list[list[int]]:
        """This epoch's batches, in order, without moving on to the next epoch (iterating
        a shuffling sampler moves on)."""
        indices = list(range(len(self.lengths)))
        generator = random.Random(self.seed + self.epoch)
        if self.shuffle:
            generator.shuffle(indices)
            pool_size = self.batch_size * self.pool_batches
            pools = [
                indices[start : start + pool_size] for start in range(0, len(indices), pool_size)
            ]
        else:
            pools = [indices]
        batches: list[list[int]] = []
        for pool in pools:
            pool.sort(key=lambda index: self.lengths[index])  # stable: keeps a pre-sorted tie order
            batches.extend(
                pool[start : start + self.batch_size]
                for start in range(0, len(pool), self.batch_size)
            )
        if self.drop_last:
            batches = [batch for batch in batches if len(batch) == self.batch_size]
        if self.shuffle:
            generator.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches()
        self.epoch += 1 if self.shuffle else 0
        return iter(batches)

    def __len__(self) -> int:
        return len(self.epoch_batches())


def make_loader(
    dataset: TranslationDataset,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    pin_memory: bool = False,
    batch_sampler: Sampler[list[int]] | None = None,
) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` with length bucketing and :func:`collate_batch`."""
    sampler = batch_sampler or BucketBatchSampler(
        dataset.length_keys, batch_size=batch_size, shuffle=shuffle, seed=seed
    )
    return DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_batch, pin_memory=pin_memory
    )


def padding_fraction(loader: DataLoader, side: str = "source") -> float:
    """Share of the positions in the loader's batches that are padding: the source's
    (``side="source"``), or the decoder targets' (``side="target"``, the positions the
    loss is computed on)."""
    if side not in ("source", "target"):
        raise ValueError(f'side must be "source" or "target", got {side!r}')
    padded = real = 0
    for batch in loader:
        if side == "source":
            padded += batch.source.numel()
            real += int(batch.source_lengths.sum())
        else:
            padded += batch.decoder_target.numel()
            real += batch.target_positions.numel()
    if padded == 0:  # a bare ZeroDivisionError before
        raise ValueError("the loader holds no batches (an empty split?)")
    return 1.0 - real / padded
