"""The data pipeline: parsing, downloading, resolving, tokenising, splitting."""

import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest

from helpers import data
from helpers.data import (
    DataFormatError,
    DataNotFoundError,
    DownloadError,
    Tokenizer,
    detokenize,
    download_tatoeba,
    fetch_into_cache,
    get_tokenizer,
    normalize_text,
    read_pairs,
    resolve_data_path,
    split_by_source,
)

# ------------------------------------------------------------------------ parsing


def write(path: Path, text: str, newline: str = "\n") -> Path:
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def test_two_and_three_columns_parse(tmp_path):
    two = write(tmp_path / "two.tsv", "Go.\tGeh.\nHi.\tHallo!\n")
    three = write(
        tmp_path / "three.txt", "Go.\tGeh.\tCC-BY 2.0 (France) Attribution: tatoeba.org #2877272\n"
    )
    assert read_pairs(two) == [("Go.", "Geh."), ("Hi.", "Hallo!")]
    assert read_pairs(three) == [("Go.", "Geh.")]


def test_crlf_line_ends_and_a_byte_order_mark_are_handled(tmp_path):
    path = tmp_path / "crlf.tsv"
    path.write_bytes("\ufeffRun!\tLauf!\r\nWow!\tDonnerwetter!\r\n".encode())
    assert read_pairs(path) == [("Run!", "Lauf!"), ("Wow!", "Donnerwetter!")]


def test_a_malformed_line_names_the_file_and_line(tmp_path):
    path = write(tmp_path / "bad.tsv", "Go.\tGeh.\nHi.\tHallo!\nthis line has no tab\n")
    with pytest.raises(DataFormatError, match=r"bad\.tsv:3: expected 2 or 3"):
        read_pairs(path)


def test_too_many_columns_empty_sentences_and_bad_bytes_are_errors(tmp_path):
    with pytest.raises(DataFormatError, match=r"many\.tsv:1: .*found 4"):
        read_pairs(write(tmp_path / "many.tsv", "a\tb\tc\td\n"))
    with pytest.raises(DataFormatError, match=r"empty\.tsv:2: empty German sentence"):
        read_pairs(write(tmp_path / "empty.tsv", "Go.\tGeh.\nHi.\t  \n"))
    latin = tmp_path / "latin1.tsv"
    latin.write_bytes("Go.\tGeh.\nHot.\tHei\xdf.\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"latin1\.tsv:2: not valid UTF-8"):
        read_pairs(latin)


def test_a_tab_inside_a_sentence_and_invisible_sentences_are_errors(tmp_path):
    """In a two-column file, "Hal<TAB>lo!" passed as the German "Hal" plus an attribution
    that was dropped; a sentence of a zero-width space passed as not empty."""
    split = write(tmp_path / "split.tsv", "Go.\tGeh.\nHi.\tHal\tlo!\n")
    with pytest.raises(
        DataFormatError, match=r"split\.tsv:2: 3 TAB-separated columns, but line 1 has 2"
    ):
        read_pairs(split)
    blank_first = write(tmp_path / "blank_first.tsv", "\nGo.\tGeh.\tCC-BY\nHi.\tHallo!\n")
    with pytest.raises(
        DataFormatError,
        match=r"blank_first\.tsv:3: 2 .*but line 2 has 3: a missing column \(the attribution\?\)",
    ):
        read_pairs(blank_first)
    for invisible in ("\u200b", "\ufeff\u200b", " \u00a0\u2060"):
        path = write(tmp_path / "invisible.tsv", f"Go.\tGeh.\nHi.\t{invisible}\n")
        with pytest.raises(DataFormatError, match=r"invisible\.tsv:2: empty German sentence"):
            read_pairs(path)
    # Files joined with cat keep a byte order mark at the start of a later line: dropped,
    # as at the start of the file, and a zero-width space inside a sentence stays.
    joined = write(tmp_path / "joined.tsv", "\ufeffGo.\tGeh.\n\ufeffHi.\tHal\u200blo!\n")
    assert read_pairs(joined) == [("Go.", "Geh."), ("Hi.", "Hal\u200blo!")]


def test_an_empty_file_is_an_error(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_bytes(b"")
    with pytest.raises(DataFormatError, match="no sentence pairs"):
        read_pairs(empty)
    with pytest.raises(DataFormatError, match="no sentence pairs"):
        read_pairs(write(tmp_path / "blank.tsv", "\n\n  \n"))


def test_max_pairs_caps_the_file(tmp_path):
    path = write(tmp_path / "pairs.tsv", "".join(f"s{i}\tt{i}\n" for i in range(10)))
    assert len(read_pairs(path, max_pairs=3)) == 3


# ----------------------------------------------------------------------- download


def make_zip(members: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return buffer.getvalue()


class Server:
    """A real HTTP server on 127.0.0.1 serving whatever body a test sets."""

    def __init__(self):
        self.body = b""
        self.declared_length = None
        self.user_agents = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                server.user_agents.append(self.headers.get("User-Agent"))
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                length = (
                    server.declared_length
                    if server.declared_length is not None
                    else len(server.body)
                )
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(server.body)  # may be shorter than declared: a cut transfer
                self.wfile.flush()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/deu-eng.zip"
        # A short poll: shutdown() waits up to one poll interval (0.5 s by default), which
        # cost half a second at the end of every test that downloads.
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    running = Server()
    yield running
    running.close()


def test_download_extracts_deu_txt_into_the_cache(server, tmp_path):
    server.body = make_zip(
        {"deu.txt": "Go.\tGeh.\tCC-BY\nHi.\tHallo!\tCC-BY\n", "_about.txt": "about"}
    )
    cached = download_tatoeba(server.url, tmp_path, timeout=10)
    assert cached == tmp_path / "deu-eng.tsv"
    assert read_pairs(cached) == [("Go.", "Geh."), ("Hi.", "Hallo!")]
    assert server.user_agents and "paying-attention" in server.user_agents[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deu-eng.tsv"]


def test_a_corrupt_zip_writes_nothing(server, tmp_path):
    server.body = b"PK\x03\x04 this is not really a zip file" * 10
    with pytest.raises(DownloadError, match="not a valid zip"):
        download_tatoeba(server.url, tmp_path, timeout=10)
    assert list(tmp_path.iterdir()) == []


def test_a_zip_without_deu_txt_writes_nothing(server, tmp_path):
    server.body = make_zip({"fra.txt": "Go.\tVa !\n"})
    with pytest.raises(DownloadError, match="no deu.txt"):
        download_tatoeba(server.url, tmp_path, timeout=10)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_transfer_leaves_no_partial_file(server, tmp_path):
    full = make_zip({"deu.txt": "Go.\tGeh.\tCC-BY\n" * 2000})
    server.body = full[: len(full) // 2]
    server.declared_length = len(full)
    with pytest.raises(DownloadError, match=f"IncompleteRead\\({len(full) // 2} bytes read"):
        download_tatoeba(server.url, tmp_path, timeout=10)
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_server_gives_a_clear_error_with_instructions(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    with pytest.raises(DataNotFoundError, match="Get it by hand"):
        resolve_data_path(data_dir=tmp_path, url="http://127.0.0.1:9/deu-eng.zip")


# ---------------------------------------------------------------------- resolving


def test_resolution_order_argument_then_environment_then_cache(tmp_path, monkeypatch):
    explicit = write(tmp_path / "explicit.tsv", "a\tb\n")
    from_env = write(tmp_path / "env.tsv", "c\td\n")
    cache_dir = tmp_path / "cache"
    cached = write((cache_dir.mkdir() or cache_dir) / "deu-eng.tsv", "e\tf\n")
    monkeypatch.setenv(data.DATA_ENV_VAR, str(from_env))
    assert resolve_data_path(explicit, data_dir=cache_dir) == explicit
    assert resolve_data_path(data_dir=cache_dir) == from_env
    monkeypatch.delenv(data.DATA_ENV_VAR)
    assert resolve_data_path(data_dir=cache_dir, download=False) == cached
    cached.unlink()
    with pytest.raises(DataNotFoundError, match=r"this call downloads nothing \(download=False\)"):
        resolve_data_path(data_dir=cache_dir, download=False)
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path / "missing.tsv"))
    with pytest.raises(DataNotFoundError, match="does not exist"):
        resolve_data_path(data_dir=cache_dir)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        resolve_data_path(tmp_path / "nope.tsv")


def test_resolution_downloads_into_the_cache_when_nothing_else_is_there(
    server, tmp_path, monkeypatch
):
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    server.body = make_zip({"deu.txt": "Go.\tGeh.\tCC-BY\n"})
    path = resolve_data_path(data_dir=tmp_path, url=server.url)
    assert path == tmp_path / "deu-eng.tsv" and read_pairs(path) == [("Go.", "Geh.")]


def test_fetch_copies_the_offline_file_into_the_cache(tmp_path, monkeypatch):
    offline = write(tmp_path / "offline.tsv", "Go.\tGeh.\n")
    monkeypatch.setenv(data.DATA_ENV_VAR, str(offline))
    cached = fetch_into_cache(tmp_path / "cache")
    assert cached.read_bytes() == offline.read_bytes()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["deu-eng.tsv"]
    monkeypatch.setenv(data.DATA_ENV_VAR, str(write(tmp_path / "junk.tsv", "no tabs here\n")))
    with pytest.raises(DataFormatError):
        fetch_into_cache(tmp_path / "cache2")
    assert not (tmp_path / "cache2" / "deu-eng.tsv").exists()


# --------------------------------------------------------------------- tokenising

ROUND_TRIPS = [
    ("en", "She kissed him."),
    ("en", "I don't know, do you?"),
    ("en", "It's Tom's cat."),
    ("en", "Tom is good-looking."),
    ("en", "I cannot read French."),
    ("en", 'He said "yes" (twice).'),
    ("de", "„Ja“, sagte er."),
    ("de", "Ich habe 3:00 Uhr gesagt!"),
    ("de", "Sie küsste ihn."),
    ("de", "Wie geht's?"),
]


@pytest.mark.parametrize(("language", "text"), ROUND_TRIPS)
def test_detokenising_a_tokenised_sentence_gives_back_the_text(language, text):
    tokens = Tokenizer(language)(text)
    assert len(tokens) > 1
    assert detokenize(tokens) == text


def test_tokeniser_keeps_case_and_splits_punctuation():
    assert Tokenizer("en")("She kissed him.") == ["She", "kissed", "him", "."]
    assert Tokenizer("de")("Sie küsste IHN!") == ["Sie", "küsste", "IHN", "!"]
    with pytest.raises(TypeError):
        Tokenizer("en")(None)


def test_an_unknown_tokenizer_name_is_a_value_error_not_spacys_import_error():
    with pytest.raises(ValueError, match="name must be 'chars' or a language code .*got 'English'"):
        get_tokenizer("English")
    with pytest.raises(ValueError, match="language must be 'chars' or a language code .*got 'qq'"):
        Tokenizer("qq")
    with pytest.raises(ValueError, match=r"name must be a str .*\(list\)"):
        get_tokenizer(["en"])
    assert get_tokenizer("chars")("ab") == ["a", "b"]
    assert get_tokenizer("de")("Sie küsste ihn.") == ["Sie", "küsste", "ihn", "."]


def test_tokenize_many_wants_a_list_of_texts_not_one_text():
    """One text would be read as one sentence per letter."""
    with pytest.raises(TypeError, match="texts is a str"):
        Tokenizer("en").tokenize_many("Hi there")
    assert Tokenizer("en").tokenize_many(["Hi there"]) == [["Hi", "there"]]


def test_normalisation_removes_stray_spaces():
    assert normalize_text("Tom war immer da .") == "Tom war immer da."
    assert normalize_text("um 6.30\u00a0Uhr  zurück") == "um 6.30 Uhr zurück"


def test_round_trip_holds_on_the_real_corpus():
    try:
        path = resolve_data_path(download=False)
    except DataNotFoundError:
        pytest.skip("no data file available")
    pairs = read_pairs(path, max_pairs=20_000)
    english, german = Tokenizer("en"), Tokenizer("de")
    sources = [source for source, _ in pairs]
    targets = [target for _, target in pairs]
    failures = sum(
        detokenize(tokens) != normalize_text(text)
        for tokens, text in zip(english.tokenize_many(sources), sources, strict=True)
    )
    failures += sum(
        detokenize(tokens) != normalize_text(text)
        for tokens, text in zip(german.tokenize_many(targets), targets, strict=True)
    )
    assert failures / (2 * len(pairs)) < 0.001, f"{failures} sentences do not round-trip"


# ---------------------------------------------------------------------- splitting


def corpus():
    pairs = []
    for index in range(300):
        for variant in range(1 + index % 3):  # one to three translations each
            pairs.append((f"English {index}.", f"Deutsch {index}/{variant}."))
    return pairs


def test_split_has_no_english_sentence_in_two_splits():
    split = split_by_source(corpus(), 0.1, 0.1, seed=1)
    train = {source for source, _ in split.train}
    valid = {source for source, _ in split.valid}
    test = {example.source for example in split.test}
    assert not train & valid and not train & test and not valid & test
    assert len(train | valid | test) == 300
    assert len(test) == 30 and len(valid) == 30


def test_split_is_deterministic_from_the_seed():
    assert split_by_source(corpus(), seed=5) == split_by_source(corpus(), seed=5)
    assert split_by_source(corpus(), seed=5).test != split_by_source(corpus(), seed=6).test


def test_test_sentences_keep_all_their_translations():
    split = split_by_source(corpus(), 0.1, 0.2, seed=2)
    for example in split.test:
        index = int(example.source.split()[1].rstrip("."))
        assert len(example.references) == 1 + index % 3
        assert all(reference.startswith(f"Deutsch {index}/") for reference in example.references)
    assert sum(len(e.references) for e in split.test) + len(split.train) + len(split.valid) == len(
        corpus()
    )


def test_split_rejects_impossible_fractions():
    with pytest.raises(ValueError):
        split_by_source(corpus(), 0.6, 0.5)


def test_a_split_without_a_whole_number_seed_is_refused_not_drawn_anew(tmp_path):
    """``seed=None`` drew a new split on every call behind one fingerprint (cache key), so
    a cached model could be scored on its own training sentences."""
    for seed in (None, 1.5, -1, "5"):
        with pytest.raises(ValueError, match=f"seed must be a whole number >= 0 .*got {seed!r}"):
            split_by_source(corpus(), seed=seed)
    from helpers.tasks import tatoeba_task

    data = write(tmp_path / "pairs.tsv", "".join(f"{a}\t{b}\n" for a, b in corpus()))
    with pytest.raises(ValueError, match="seed must be a whole number"):
        tatoeba_task(data, seed=None)
    import numpy as np

    assert split_by_source(corpus(), seed=np.int64(5)) == split_by_source(corpus(), seed=5)


def test_pairs_must_be_pairs_not_two_letter_strings():
    with pytest.raises(TypeError, match=r"pairs\[0\] must be a \(source, target\) pair, got 'ab'"):
        split_by_source(["ab", "cd"] * 20)
    with pytest.raises(TypeError, match=r"pairs is a str .*give \(source, target\) pairs"):
        split_by_source("ab\tcd")
    import numpy as np

    rows = np.array(corpus(), dtype=object)  # a DataFrame's .values: rows, not tuples
    assert split_by_source(rows, seed=5) == split_by_source(corpus(), seed=5)


# ------------------------------------------------------------- bad input, poisoned cache


def test_two_spellings_of_one_sentence_never_fall_into_different_splits():
    pairs = []
    for index in range(200):
        pairs.append((f"Sentence {index}.", f"Satz {index}."))
        # The same sentence with a stray space before the full stop, and with a
        # non-breaking space: one sentence for the tokeniser, so one group for the split.
        pairs.append((f"Sentence {index} .", f"Ein Satz {index}."))
        pairs.append((f"Sentence\u00a0{index}.", f"Der Satz {index}."))
    for seed in range(5):
        split = split_by_source(pairs, 0.1, 0.1, seed=seed)
        where = {}
        for name, sources in [
            ("train", [s for s, _ in split.train]),
            ("valid", [s for s, _ in split.valid]),
            ("test", [e.source for e in split.test]),
        ]:
            for source in sources:
                where.setdefault(normalize_text(source), set()).add(name)
        assert len(where) == 200 and all(len(splits) == 1 for splits in where.values())
        assert all(len(example.references) == 3 for example in split.test)


def test_cr_only_line_endings_are_named_not_merged(tmp_path):
    path = write(tmp_path / "mac.tsv", "Go.\tGeh.\nHi.\tHallo!\n", newline="\r")
    with pytest.raises(DataFormatError, match=r"mac.tsv:1: a carriage return.*CR-only"):
        read_pairs(path)


def test_a_directory_or_a_bad_max_pairs_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError, match="is a directory"):
        read_pairs(tmp_path)
    with pytest.raises(DataNotFoundError, match="is a directory"):
        resolve_data_path(tmp_path)
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path))
    with pytest.raises(DataNotFoundError, match="a directory"):
        resolve_data_path()
    path = write(tmp_path / "ok.tsv", "Go.\tGeh.\n")
    for bad in (0, -3):
        with pytest.raises(ValueError, match="max_pairs must be at least 1"):
            read_pairs(path, max_pairs=bad)
    for bad in (2.5, "3", True):
        with pytest.raises(TypeError, match="max_pairs must be an int"):
            read_pairs(path, max_pairs=bad)


def corrupt_member_zip() -> bytes:
    """A zip whose directory is fine but whose deflated deu.txt is garbage."""
    good = make_zip({"deu.txt": "Go.\tGeh.\tCC-BY\n" * 500})
    with zipfile.ZipFile(io.BytesIO(good)) as archive:
        info = archive.getinfo("deu.txt")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    broken = bytearray(good)
    broken[start : start + 8] = b"\xff" * 8  # an invalid deflate block header
    return bytes(broken)


def latin1_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("deu.txt", "Go.\tGehé.\n".encode("latin-1"))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make_body", "reason"),
    [
        (corrupt_member_zip, "not a valid zip"),
        (lambda: make_zip({"deu.txt": ""}), "no sentence pairs"),
        (lambda: make_zip({"deu.txt": "<!DOCTYPE html><html>Slow down</html>\n"}), "TAB-separated"),
        (latin1_zip, "not valid UTF-8"),
    ],
    ids=["corrupt member", "empty", "html", "not utf-8"],
)
def test_a_bad_download_never_reaches_the_cache(server, tmp_path, monkeypatch, make_body, reason):
    server.body = make_body()
    with pytest.raises(DownloadError, match=reason):
        download_tatoeba(server.url, tmp_path, timeout=10)
    assert list(tmp_path.iterdir()) == []
    # Through the resolver, the reader gets the by-hand instructions, and nothing is cached.
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    with pytest.raises(DataNotFoundError, match="Get it by hand"):
        resolve_data_path(data_dir=tmp_path, url=server.url)
    assert list(tmp_path.iterdir()) == []


def test_a_mirror_url_can_be_set_without_editing_code(server, tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    monkeypatch.setenv(data.URL_ENV_VAR, server.url)
    server.body = make_zip({"deu.txt": "Go.\tGeh.\tCC-BY\n"})
    assert read_pairs(resolve_data_path(data_dir=tmp_path)) == [("Go.", "Geh.")]
    assert server.user_agents, "the mirror was not asked"


def test_fetch_checks_every_line_and_agrees_with_where(tmp_path, monkeypatch):
    lines = "".join(f"English {i}.\tDeutsch {i}.\n" for i in range(40)) + "broken line\n"
    monkeypatch.setenv(data.DATA_ENV_VAR, str(write(tmp_path / "late.tsv", lines)))
    with pytest.raises(DataFormatError, match="late.tsv:41"):
        fetch_into_cache(tmp_path / "cache")
    assert not (tmp_path / "cache" / "deu-eng.tsv").exists()
    # With a good file in the variable and an older one in the cache, `fetch` and
    # `where` name the same file: the one the notebooks will read.
    good = write(tmp_path / "good.tsv", "Go.\tGeh.\n")
    (tmp_path / "cache").mkdir()
    write(tmp_path / "cache" / "deu-eng.tsv", "Hi.\tHallo!\n")
    monkeypatch.setenv(data.DATA_ENV_VAR, str(good))
    assert fetch_into_cache(tmp_path / "cache") == resolve_data_path(data_dir=tmp_path / "cache")
    assert read_pairs(tmp_path / "cache" / "deu-eng.tsv") == [("Go.", "Geh.")]


def test_the_command_line_fetches_and_says_where_with_exit_codes(tmp_path, monkeypatch, capsys):
    """``python -m helpers where`` prints the file the notebooks will read, copying
    nothing; ``fetch`` also fills the cache, and prints the same file; an error is one
    line and exit code 1."""
    offline = write(tmp_path / "offline.tsv", "Go.\tGeh.\n")
    cache = tmp_path / "cache"
    monkeypatch.setenv(data.DATA_DIR_ENV_VAR, str(cache))
    monkeypatch.setenv(data.DATA_ENV_VAR, str(offline))
    assert data.main(["where"]) == 0
    assert capsys.readouterr().out.strip() == str(offline)
    assert not (cache / "deu-eng.tsv").exists()
    assert data.main(["fetch"]) == 0
    assert capsys.readouterr().out.strip() == str(offline)
    assert (cache / "deu-eng.tsv").read_bytes() == offline.read_bytes()
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path / "missing.tsv"))
    assert data.main(["where"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    with pytest.raises(SystemExit):
        data.main([])  # a command is required


def test_where_downloads_nothing_and_says_how_to_fetch(tmp_path, monkeypatch, capsys):
    """``where`` only says; with nothing cached it started a download into the cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(data.DATA_DIR_ENV_VAR, str(cache))
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)

    def no_download(*arguments, **settings):
        raise AssertionError("where downloaded")

    monkeypatch.setattr(data, "download_tatoeba", no_download)
    assert data.main(["where"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: No English–German data found")
    assert error.rstrip().endswith("Or run `python -m helpers fetch`, which downloads it.")
    assert not cache.exists()


def test_fetch_checks_a_file_already_in_the_cache(tmp_path, monkeypatch, capsys):
    """A damaged cache was served with exit code 0, and every notebook then failed on it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(data.DATA_DIR_ENV_VAR, str(cache))
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    cache.mkdir()
    cached = write(cache / "deu-eng.tsv", "Go.\tGeh.\ngarbage\n")
    assert data.main(["fetch"]) == 1
    error = capsys.readouterr().err
    assert f"{cached}:2" in error and f"delete {cached} and fetch again" in error
    assert cached.read_text() == "Go.\tGeh.\ngarbage\n"  # nothing removed behind your back
    write(cached, "Go.\tGeh.\n")
    assert data.main(["fetch"]) == 0
    assert capsys.readouterr().out.strip() == str(cached)


def test_a_directory_where_the_cache_file_belongs_is_named(tmp_path, monkeypatch, capsys):
    (tmp_path / "deu-eng.tsv").mkdir()
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    with pytest.raises(DataNotFoundError, match="deu-eng.tsv is a directory, where the cached"):
        resolve_data_path(data_dir=tmp_path, download=True, url="http://127.0.0.1:9/x.zip")


def test_a_cache_folder_that_is_a_file_is_one_error_line(tmp_path, monkeypatch, capsys):
    offline = write(tmp_path / "offline.tsv", "Go.\tGeh.\n")
    blocker = write(tmp_path / "blocker", "keep me")
    monkeypatch.setenv(data.DATA_ENV_VAR, str(offline))
    monkeypatch.setenv(data.DATA_DIR_ENV_VAR, str(blocker))
    assert data.main(["fetch"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "Traceback" not in error
    assert blocker.read_text() == "keep me"


def test_a_url_that_is_not_one_is_a_download_error(tmp_path):
    with pytest.raises(data.DownloadError, match="could not download notaurl"):
        data.download_tatoeba("notaurl", tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("valid", "test"), [(0.0, 0.1), (0.1, 0.0), (0.0, 0.0), (0.5, 0.49)])
def test_fractions_whose_sum_is_below_one_are_accepted(valid, test):
    split = split_by_source(corpus(), valid, test, seed=0)
    assert len({example.source for example in split.test}) == round(300 * test)
    assert len({source for source, _ in split.valid}) == round(300 * valid)
    assert split.train


@pytest.mark.parametrize(("valid", "test"), [(0.5, 0.5), (1.0, 0.0), (0.0, 1.0), (-0.1, 0.1)])
def test_fractions_that_leave_no_training_data_are_refused(valid, test):
    with pytest.raises(ValueError, match="fraction"):
        split_by_source(corpus(), valid, test)


def test_one_pair_is_a_valid_cap(tmp_path):
    path = write(tmp_path / "pairs.tsv", "a\tb\nc\td\n")
    assert read_pairs(path, max_pairs=1) == [("a", "b")]


def test_detokenize_refuses_a_str_which_it_would_spread_out_letter_by_letter():
    assert detokenize(["Hallo", "Welt", "."]) == "Hallo Welt."
    with pytest.raises(TypeError, match="tokens is a str"):
        detokenize("Hallo Welt .")  # was 'H a l l o   W e l t  .'


def test_a_sentence_that_is_not_text_is_named_not_a_bare_error():
    """None met unicodedata's "argument 2 must be str" or "'NoneType' object has no
    attribute 'lower'"."""
    with pytest.raises(TypeError, match="expected text as str, got NoneType"):
        normalize_text(None)
    with pytest.raises(TypeError, match="expected text as str, got NoneType"):
        Tokenizer("en").tokenize_many(["Hi there.", None])
    with pytest.raises(TypeError, match=r"tokens must be strings, got None \(NoneType\)"):
        detokenize(["Hallo", None])
