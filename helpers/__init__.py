"""Paying Attention: the shared, tested code behind the notebook series.

Each module does one job (see the README for the map):

* :mod:`helpers.attention` — every scoring function, local and multi-head attention;
* :mod:`helpers.encoders` — the RNN and self-attention encoders;
* :mod:`helpers.decoders` — the Bahdanau, Luong and plain (no attention) decoders;
* :mod:`helpers.models` — :class:`ModelConfig` and the :class:`Seq2Seq` wrapper;
* :mod:`helpers.data` — download, cache, parse, tokenise and split Tatoeba;
* :mod:`helpers.vocab`, :mod:`helpers.batching` — vocabularies and padded batches;
* :mod:`helpers.synthetic` — the dates task with a gold alignment;
* :mod:`helpers.tasks` — data → vocabularies → loaders in one call (Tatoeba, dates, copy);
* :mod:`helpers.recipes` — the series' model and training settings, and the training cache;
* :mod:`helpers.training`, :mod:`helpers.checkpoints` — the loop and safe checkpoints;
* :mod:`helpers.decoding` — greedy and beam search, ``translate``;
* :mod:`helpers.metrics`, :mod:`helpers.viz` — sacreBLEU, alignment scores, heatmaps.
"""

from .attention import (
    ATTENTION_NAMES,
    AdditiveAttention,
    Attention,
    ConcatAttention,
    DotAttention,
    GeneralAttention,
    LocalAttention,
    MultiHeadAttention,
    ScaledDotAttention,
    attention_entropy,
    build_attention,
    masked_softmax,
)
from .batching import Batch, BucketBatchSampler, TranslationDataset, collate_batch, make_loader
from .checkpoints import CheckpointMismatchError, load_checkpoint, save_checkpoint
from .data import (
    DataFormatError,
    DataNotFoundError,
    DataSplit,
    TestExample,
    Tokenizer,
    detokenize,
    load_pairs,
    read_pairs,
    resolve_data_path,
    split_by_source,
)
from .decoders import BahdanauDecoder, LuongDecoder, PlainDecoder
from .decoding import Translation, beam_search, decode, greedy_decode, translate, translate_batch
from .encoders import Encoder, SelfAttentionEncoder
from .metrics import (
    alignment_accuracy,
    attention_row_entropies,
    corpus_scores,
    mean_attention_entropy,
)
from .models import ModelConfig, Seq2Seq, build_model, count_parameters
from .synthetic import DateExample, dates_splits, generate_dates
from .training import (
    TrainingHistory,
    TrainSettings,
    evaluate_loss,
    select_device,
    sequence_loss,
    set_seed,
    train,
)
from .vocab import EOS_INDEX, PAD_INDEX, SOS_INDEX, UNK_INDEX, Vocabulary

__all__ = [name for name in dir() if not name.startswith("_")]
