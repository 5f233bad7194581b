"""The English→German sentence pairs: download, cache, parse, tokenise and split.

The real source is manythings.org's ``deu-eng.zip`` (``deu.txt``: English TAB German
TAB attribution), built from the Tatoeba Project and licensed CC-BY 2.0 (France).

Where the data comes from, in order (:func:`resolve_data_path`):

1. an explicit ``path`` argument;
2. the environment variable ``PAYING_ATTENTION_DATA`` (a ``.tsv``/``.txt`` file);
3. the cached file ``data/deu-eng.tsv`` in the repository;
4. a download from manythings.org (or the mirror in ``PAYING_ATTENTION_URL``) into
   that cache, checked line by line before it is cached;
5. otherwise a :class:`DataNotFoundError` that says how to get the data by hand.

Run ``python -m helpers fetch`` to fill the cache (the Makefile does this).
"""

from __future__ import annotations

import argparse
import http.client
import io
import numbers
import os
import random
import re
import shutil
import sys
import unicodedata
import urllib.error
import urllib.request
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .checks import whole_number
from .files import atomic_destination, atomic_write_bytes
from .vocab import _reject_non_strings, reject_text

DOWNLOAD_URL = "https://www.manythings.org/anki/deu-eng.zip"
#: Set this to download from a mirror instead of :data:`DOWNLOAD_URL`.
URL_ENV_VAR = "PAYING_ATTENTION_URL"
DATA_ENV_VAR = "PAYING_ATTENTION_DATA"
DATA_DIR_ENV_VAR = "PAYING_ATTENTION_DATA_DIR"
CACHE_FILENAME = "deu-eng.tsv"
USER_AGENT = "paying-attention-tutorial/0.1 (+https://github.com/paying-attention)"
# manythings.org's deu.txt is sorted from the shortest English sentence up; its first
# 50,001 lines are exactly the offline copy used in CI, so capping a download at this
# many pairs gives every reader the same corpus.
DEFAULT_MAX_PAIRS = 50_001

Pair = tuple[str, str]


class DataNotFoundError(FileNotFoundError):
    """No data file could be found or downloaded."""


class DataFormatError(ValueError):
    """A data file is malformed; the message names the file and the line."""


class DownloadError(RuntimeError):
    """A download failed; nothing was written to the cache."""


def default_data_dir() -> Path:
    """The ignored cache folder: ``$PAYING_ATTENTION_DATA_DIR`` or ``<repo>/data``."""
    override = os.environ.get(DATA_DIR_ENV_VAR)
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "data"


# --------------------------------------------------------------------------- files


def read_pairs(path: str | os.PathLike, max_pairs: int | None = None) -> list[Pair]:
    """Parse a Tatoeba/manythings file into ``(english, german)`` pairs.

    Each line holds two or three TAB-separated columns (the third, the attribution,
    is dropped), the same number on every line. UTF-8, LF or CRLF line ends, byte order
    marks dropped at the start of any line. Blank lines are skipped.

    Raises:
        DataFormatError: a line with the wrong number of columns (or another number
            than the first line's), an empty sentence (or one of invisible characters),
            bytes that are not UTF-8, carriage-return-only line ends, or a file with no
            pairs at all. The message names the file and the 1-based line number.
        DataNotFoundError: ``path`` does not exist or is a directory.
        ValueError: ``max_pairs`` below 1.
    """
    path = Path(path)
    if max_pairs is not None and (
        isinstance(max_pairs, bool) or not isinstance(max_pairs, numbers.Integral)
    ):
        raise TypeError(f"max_pairs must be an int (or None for all), got {max_pairs!r}")
    if max_pairs is not None and max_pairs < 1:
        raise ValueError(f"max_pairs must be at least 1 (or None for all), got {max_pairs!r}")
    if path.is_dir():
        raise DataNotFoundError(f"{path} is a directory, not a data file")
    if not path.is_file():
        raise DataNotFoundError(f"data file {path} does not exist")
    with open(path, "rb") as stream:
        return _parse_pairs(stream, str(path), max_pairs)


def _parse_pairs(lines: Iterable[bytes], name: str, max_pairs: int | None = None) -> list[Pair]:
    """:func:`read_pairs` on lines of bytes; ``name`` (a path or URL) goes in the errors."""
    pairs: list[Pair] = []
    first_columns: tuple[int, int] | None = None  # (line number, column count) of line 1
    for line_number, raw_line in enumerate(lines, start=1):
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataFormatError(f"{name}:{line_number}: not valid UTF-8 ({error})") from None
        # A byte order mark starts a file, or each part of files joined with cat: never text.
        line = line.removeprefix("\ufeff")
        line = line.rstrip("\r\n")
        if "\r" in line:
            raise DataFormatError(
                f"{name}:{line_number}: a carriage return inside the line. CR-only "
                "(old Mac) line endings would merge sentences into one pair: convert them "
                "to LF (e.g. tr '\\r' '\\n'), or remove the stray character"
            )
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) not in (2, 3):
            raise DataFormatError(
                f"{name}:{line_number}: expected 2 or 3 TAB-separated columns "
                f"(English, German[, attribution]), found {len(columns)}: {line[:80]!r}"
            )
        if first_columns is None:
            first_columns = (line_number, len(columns))
        elif len(columns) != first_columns[1]:
            # Either the file mixes formats, or a TAB inside a sentence split it (in a
            # two-column file, "Hal<TAB>lo!" would pass as the German "Hal" plus an
            # attribution).
            hint = (
                "a TAB inside a sentence?"
                if len(columns) > first_columns[1]
                else "a missing column (the attribution?)"
            )
            raise DataFormatError(
                f"{name}:{line_number}: {len(columns)} TAB-separated columns, but line "
                f"{first_columns[0]} has {first_columns[1]}: {hint}"
            )
        english, german = columns[0].strip(), columns[1].strip()
        for side, sentence in (("English", english), ("German", german)):
            if not any(_visible(character) for character in sentence):
                raise DataFormatError(f"{name}:{line_number}: empty {side} sentence")
        pairs.append((english, german))
        if max_pairs is not None and len(pairs) >= max_pairs:
            break
    if not pairs:
        raise DataFormatError(f"{name}: the file holds no sentence pairs")
    return pairs


def _visible(character: str) -> bool:
    """Not a space, a control or an invisible format character (zero-width space, BOM…)."""
    return unicodedata.category(character)[0] not in "ZC"


# ------------------------------------------------------------------------ download


def download_url() -> str:
    """Where the data is downloaded from: ``$PAYING_ATTENTION_URL`` or :data:`DOWNLOAD_URL`."""
    return os.environ.get(URL_ENV_VAR) or DOWNLOAD_URL


def download_tatoeba(
    url: str | None = None,
    data_dir: str | os.PathLike | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``deu-eng.zip``, check it, extract ``deu.txt`` into the cache atomically.

    Returns the path of the cached ``deu-eng.tsv``. On any failure (network error,
    truncated transfer, a file that is not a valid zip, a corrupt member, a zip without
    ``deu.txt``, or a ``deu.txt`` that is not sentence pairs: empty, HTML, not UTF-8) a
    :class:`DownloadError` is raised and the cache is left untouched: every line is
    checked *before* the file is renamed into the cache, so a bad download can never
    poison it. ``url`` defaults to :func:`download_url`.
    """
    url = url or download_url()
    target = Path(data_dir) if data_dir is not None else default_data_dir()
    try:
        # (inside: a URL that is not one, "unknown url type", is a ValueError here)
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        # HTTPException covers IncompleteRead: http.client itself checks the bytes that
        # arrive against Content-Length, and raises it when the server closes early.
        raise DownloadError(f"could not download {url}: {error!r}") from error
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            broken_member = archive.testzip()
            if broken_member is not None:
                raise DownloadError(f"{url}: corrupt member {broken_member!r} in the zip")
            names = [name for name in archive.namelist() if Path(name).name == "deu.txt"]
            if not names:
                raise DownloadError(f"{url}: the zip holds no deu.txt ({archive.namelist()})")
            text = archive.read(names[0])
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        # zlib.error: a member whose compressed data is corrupt (testzip lets it through).
        raise DownloadError(f"{url}: not a valid zip file ({error!r})") from error
    try:
        _parse_pairs(io.BytesIO(text), f"{url} (deu.txt)")
    except DataFormatError as error:
        raise DownloadError(f"the downloaded file is not sentence pairs: {error}") from error
    cached = target / CACHE_FILENAME
    atomic_write_bytes(cached, text)
    return cached


def resolve_data_path(
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    url: str | None = None,
) -> Path:
    """Find the sentence-pair file: argument → environment variable → cache → download."""
    url = url or download_url()
    if path is not None:
        explicit = Path(path)
        if explicit.is_dir():
            raise DataNotFoundError(f"{explicit} is a directory, not a data file")
        if not explicit.is_file():
            raise DataNotFoundError(f"data file {explicit} does not exist")
        return explicit
    from_env = os.environ.get(DATA_ENV_VAR)
    if from_env:
        env_path = Path(from_env)
        if env_path.is_dir():
            raise DataNotFoundError(f"${DATA_ENV_VAR} points to {env_path}, a directory")
        if not env_path.is_file():
            raise DataNotFoundError(f"${DATA_ENV_VAR} points to {env_path}, which does not exist")
        return env_path
    cache_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    cached = cache_dir / CACHE_FILENAME
    if cached.is_file():
        return cached
    if cached.is_dir():
        raise DataNotFoundError(
            f"{cached} is a directory, where the cached data file belongs: move it away"
        )
    if download:
        try:
            return download_tatoeba(url, cache_dir)
        except DownloadError as error:
            reason = f"the download failed ({error})"
    else:
        reason = "this call downloads nothing (download=False)"
    raise DataNotFoundError(
        f"No English–German data found and {reason}.\n"
        f"Get it by hand: download {url}, unzip it and save deu.txt as "
        f"{cached}, or set ${DATA_ENV_VAR} to a TAB-separated English/German file."
    )


def fetch_into_cache(data_dir: str | os.PathLike | None = None) -> Path:
    """Make sure the data is there, and return the file the notebooks will use.

    With ``$PAYING_ATTENTION_DATA`` set, that file is checked line by line and copied
    into the cache (for later sessions without the variable); the notebooks use the
    variable's file while it is set, so that is the path returned, as
    :func:`resolve_data_path` (``python -m helpers where``) returns it. Otherwise the
    cache is filled by a download when empty.
    """
    cache_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    cached = cache_dir / CACHE_FILENAME
    from_env = os.environ.get(DATA_ENV_VAR)
    if from_env:
        source = resolve_data_path(data_dir=cache_dir, download=False)  # the variable's file
        read_pairs(source)  # every line, before anything reaches the cache
        if not cached.is_file() or cached.read_bytes() != source.read_bytes():
            with atomic_destination(cached) as temporary:
                shutil.copyfile(source, temporary)
        return source
    already_cached = cached.is_file()
    path = resolve_data_path(data_dir=cache_dir)
    if already_cached:  # a download is checked before it is cached; a file found there not
        try:
            read_pairs(path)
        except DataFormatError as error:
            raise DataFormatError(
                f"{error}\nThe cached file is damaged: delete {path} and fetch again."
            ) from None
    return path


def load_pairs(
    path: str | os.PathLike | None = None, max_pairs: int | None = DEFAULT_MAX_PAIRS
) -> list[Pair]:
    """Resolve the data file and parse it; ``max_pairs`` caps the (length-sorted) file."""
    return read_pairs(resolve_data_path(path), max_pairs=max_pairs)


# ---------------------------------------------------------------------- tokenising

_NO_SPACE_BEFORE = frozenset(
    {".", "..", "...", ",", "!", "?", ":", ";", ")", "]", "}", "%", "…", "“", "»", "'", "’"}
    | {"n't", "'s", "'m", "'re", "'ve", "'ll", "'d"}
    | {"n’t", "’s", "’m", "’re", "’ve", "’ll", "’d"}
)
_NO_SPACE_AFTER = frozenset({"(", "[", "{", "„", "«", "¿", "¡", "‘", "‚", "$", "€", "£"})
_SPACE_BEFORE_PUNCTUATION = re.compile(r" ([.,!?;:])")


def normalize_text(text: str) -> str:
    """Unicode NFC, plain spaces, no space before ``.,!?;:`` and no doubled spaces.

    Tatoeba has a few stray non-breaking spaces and ``"word ."`` typos; normalising
    them once at load time keeps the tokeniser's round trip exact.
    """
    if not isinstance(text, str):  # None met unicodedata's bare "argument 2 must be str"
        raise TypeError(f"expected text as str, got {type(text).__name__}: {text!r}")
    text = unicodedata.normalize("NFC", text)
    text = re.sub(r"\s+", " ", text.replace("\u00a0", " ").replace("\u202f", " ")).strip()
    return _SPACE_BEFORE_PUNCTUATION.sub(r"\1", text)


def detokenize(tokens: Sequence[str]) -> str:
    """Join tokens back into text with the spacing rules of English and German.

    Punctuation and clitics (``n't``, ``'s``) attach to the left, opening brackets and
    quotes to the right, straight double quotes alternate between opening and closing,
    a hyphen between two words joins them, and ``can`` + ``not`` becomes ``cannot``
    (spaCy splits it). On the offline corpus this gives back 99.99% of the normalised
    sentences exactly; the rest are CSV-escaped doubled quotes.
    """
    reject_text(tokens, "tokens")  # a str would come back spread out letter by letter
    pieces: list[str] = []
    quote_is_open = False
    glue_next = False
    previous: str | None = None
    tokens = list(tokens)
    _reject_non_strings(tokens)  # None met "'NoneType' object has no attribute 'lower'"
    for token in tokens:
        space = bool(pieces) and not glue_next
        glue_next = False
        lowered = token.lower()
        if lowered in _NO_SPACE_BEFORE:
            space = False
        if token == '"':
            if quote_is_open:
                space = False
            else:
                glue_next = True
            quote_is_open = not quote_is_open
        if token in _NO_SPACE_AFTER:
            glue_next = True
        if token == "-" and previous is not None and previous[-1:].isalnum():
            space, glue_next = False, True
        if lowered == "not" and previous is not None and previous.lower() == "can":
            space = False
        pieces.append(" " + token if space else token)
        previous = token
    return "".join(pieces)


class Tokenizer:
    """spaCy's blank (rule-based, no model download) tokenizer for one language.

    Case is kept. ``detokenize(tokenize(text)) == normalize_text(text)`` for all but a
    handful of corpus sentences (see :func:`detokenize`).

    Example:
        >>> Tokenizer("en")("She kissed him.")
        ['She', 'kissed', 'him', '.']
    """

    def __init__(self, language: str) -> None:
        self.language = check_tokenizer_name("language", language)
        self._spacy_tokenizer = _blank_spacy_tokenizer(language)

    def __call__(self, text: str) -> list[str]:
        if not isinstance(text, str):
            raise TypeError(f"expected text as str, got {type(text).__name__}")
        return [token.text for token in self._spacy_tokenizer(normalize_text(text))]

    def tokenize_many(self, texts: Iterable[str], batch_size: int = 2000) -> list[list[str]]:
        """Tokenise many texts with spaCy's ``pipe`` (faster than one call each)."""
        if isinstance(texts, str):
            raise TypeError(
                f"texts is a str ({texts[:30]!r}): give a list of texts, or call the tokenizer on one"
            )
        normalised = (normalize_text(text) for text in texts)
        return [
            [token.text for token in doc]
            for doc in self._spacy_tokenizer.pipe(normalised, batch_size=batch_size)
        ]

    @staticmethod
    def detokenize(tokens: Sequence[str]) -> str:
        return detokenize(tokens)

    def __repr__(self) -> str:
        return f"Tokenizer({self.language!r})"


@lru_cache(maxsize=8)
def _blank_spacy_tokenizer(language: str):
    import spacy

    return spacy.blank(language).tokenizer


class CharTokenizer:
    """Splits text into characters; used by the synthetic dates task."""

    language = "chars"

    def __call__(self, text: str) -> list[str]:
        if not isinstance(text, str):
            raise TypeError(f"expected text as str, got {type(text).__name__}")
        return list(text)

    @staticmethod
    def detokenize(tokens: Sequence[str]) -> str:
        return "".join(tokens)

    def __repr__(self) -> str:
        return "CharTokenizer()"


def check_tokenizer_name(field_name: str, name: object) -> str:
    """``name`` if :func:`get_tokenizer` can make a tokenizer of it, else a ``ValueError``
    naming ``field_name``.

    ``"chars"``, or a language code that spaCy has (``"en"``, ``"de"``, ``"xx"`` …; lower
    case, as spaCy spells them). A model's config is checked when it is made: a name like
    ``"EN"`` or ``"english"`` once passed, trained a model, and failed only when that model
    first translated, with spaCy's ``ImportError``. The check builds spaCy's blank tokenizer
    (cached: a second or two once per process and language, then nothing), so a language
    whose extra dependency is missing (``"ja"`` needs SudachiPy) is refused here too.
    """
    if not isinstance(name, str):
        raise ValueError(
            f"{field_name} must be a str ('chars' or a spaCy language code such as 'en'), "
            f"got {name!r} ({type(name).__name__})"
        )
    if name == "chars":
        return name
    try:  # built once and cached: what Tokenizer(name) will use
        _blank_spacy_tokenizer(name)
    except Exception as error:  # ImportError, or AttributeError for "punctuation" and the like
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"{field_name} must be 'chars' or a language code that spaCy has, in lower case "
            f"('en', 'de', 'fr', …), got {name!r} (spaCy: {reason})"
        ) from None
    return name


def get_tokenizer(name: str) -> Tokenizer | CharTokenizer:
    """``"en"``/``"de"`` (any spaCy language code) or ``"chars"``; a ``ValueError`` for any
    other name (:func:`check_tokenizer_name`)."""
    return CharTokenizer() if check_tokenizer_name("name", name) == "chars" else Tokenizer(name)


# ------------------------------------------------------------------------ splitting


@dataclass(frozen=True)
class TestExample:
    """One held-out source sentence with every reference translation of it."""

    source: str
    references: tuple[str, ...]


@dataclass(frozen=True)
class DataSplit:
    """Train and validation pairs, and test sentences grouped by source."""

    train: list[Pair]
    valid: list[Pair]
    test: list[TestExample]

    def summary(self) -> dict[str, int]:
        return {
            "train pairs": len(self.train),
            "valid pairs": len(self.valid),
            "test sentences": len(self.test),
            "test references": sum(len(example.references) for example in self.test),
        }


def group_by_source(pairs: Iterable[Pair]) -> OrderedDict[str, list[str]]:
    """Map each source sentence to all of its translations, in first-seen order.

    Sentences are grouped by their *normalised* text (:func:`normalize_text`, what the
    tokeniser sees), so two spellings of one sentence (``"Go ."`` and ``"Go."``, a
    non-breaking space) form one group, keyed by the first spelling seen: they can never
    fall into different splits.
    """
    if isinstance(pairs, str):
        raise TypeError(
            f"pairs is a str ({pairs[:30]!r}): give (source, target) pairs, as read_pairs "
            "and load_pairs return them"
        )
    groups: OrderedDict[str, list[str]] = OrderedDict()
    first_spelling: dict[str, str] = {}
    for index, pair in enumerate(pairs):
        # A 2-letter str would unpack into a "pair" of letters without complaint. (Any
        # other 2-long row will do: a tuple, a list, a NumPy row of a DataFrame's .values.)
        if isinstance(pair, str) or not hasattr(pair, "__len__") or len(pair) != 2:
            raise TypeError(f"pairs[{index}] must be a (source, target) pair, got {pair!r}")
        source, target = pair
        key = first_spelling.setdefault(normalize_text(source), source)
        groups.setdefault(key, []).append(target)
    return groups


def split_by_source(
    pairs: Sequence[Pair],
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
) -> DataSplit:
    """Split pairs so that no source (English) sentence lands in two splits.

    Many English sentences have several German translations (and a few have several
    spellings: they are grouped on normalised text). Splitting pairs at random
    would put "I'm tired." → "Ich bin müde." in training and "I'm tired." → "Ich bin
    erschöpft." in the test set, and the test score would reward memorisation. So the
    *distinct* English sentences are shuffled with ``seed`` and cut into three groups;
    each test sentence keeps all of its German translations as references.
    """
    # seed=None drew a new split on every call, behind one cache key (the fingerprint
    # holds the seed): a cached model could then be scored on its own training sentences.
    seed = whole_number("seed", seed, least=0, why="the split must be the same every time")
    if not 0 <= valid_fraction < 1 or not 0 <= test_fraction < 1:
        raise ValueError("valid_fraction and test_fraction must lie in [0, 1)")
    if valid_fraction + test_fraction >= 1:
        raise ValueError("valid_fraction + test_fraction must be below 1")
    groups = group_by_source(pairs)
    sources = list(groups)
    random.Random(seed).shuffle(sources)
    test_count = round(len(sources) * test_fraction)
    valid_count = round(len(sources) * valid_fraction)
    test_sources = sources[:test_count]
    valid_sources = sources[test_count : test_count + valid_count]
    train_sources = sources[test_count + valid_count :]

    def pairs_of(chosen: list[str]) -> list[Pair]:
        return [(source, target) for source in chosen for target in groups[source]]

    return DataSplit(
        train=pairs_of(train_sources),
        valid=pairs_of(valid_sources),
        test=[TestExample(source, tuple(groups[source])) for source in test_sources],
    )


# ------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "fetch", help="fill the data cache (copy $PAYING_ATTENTION_DATA or download)"
    )
    commands.add_parser(
        "where", help="print the data file the notebooks will use (downloads nothing)"
    )
    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "fetch":
            path = fetch_into_cache()
        else:  # says where, and fetches nothing: that is `fetch`'s job
            path = resolve_data_path(download=False)
    except DataNotFoundError as error:
        nothing_cached = not (default_data_dir() / CACHE_FILENAME).exists()
        if arguments.command == "where" and not os.environ.get(DATA_ENV_VAR) and nothing_cached:
            error = f"{error}\nOr run `python -m helpers fetch`, which downloads it."
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (DataFormatError, OSError) as error:  # OSError: a cache folder that is a file, say
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0
