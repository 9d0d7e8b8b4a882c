"""Decontamination (cotshape/data/decontaminate.py, ``cotshape decontaminate``) on literal fixtures."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from rapidfuzz import fuzz

from cotshape.cli import main
from cotshape.core.errors import InputError, RecordError
from cotshape.data.decontaminate import (
    decontaminate,
    fuzzy_matches,
    ngram_matches,
    normalize,
    read_records,
    word_ngrams,
)

T_CLIPS = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
           "How many clips did Natalia sell altogether in April and May?")
T_BAKERY = ("A bakery makes 120 loaves of bread every morning and sells them at 3 dollars each. If 15 loaves "
            "are left unsold at the end of the day, how much money does the bakery earn?")
T_WENG = "Weng earns 12 dollars an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?"

TEST = [{"id": "t1", "question": T_CLIPS}, {"id": "t2", "question": T_BAKERY}, {"id": "t3", "question": T_WENG}]
TRAIN = [
    {"id": "a_exact", "question": T_CLIPS},  # an exact copy
    {"id": "b_number", "question": T_BAKERY.replace("120", "125")},  # one number changed
    # reworded, but "yesterday she just did 50 minutes of babysitting" is an 8-gram of t3
    {"id": "c_reworded", "question": "A teenager charges 15 dollars per hour to watch kids. Yesterday, she just "
                                     "did 50 minutes of babysitting. What was her pay?"},
    {"id": "d_unrelated", "question": "Find the number of positive divisors of 360 that are perfect squares."},
]
EXPECTED = {
    "flagged": 3,
    "by_method": {"ngram": 3, "fuzzy": 2, "exact": 1},
    "pairs": [["a_exact", "t1", "exact"], ["a_exact", "t1", "ngram"], ["a_exact", "t1", "fuzzy"],
              ["b_number", "t2", "ngram"], ["b_number", "t2", "fuzzy"],
              ["c_reworded", "t3", "ngram"]],
}


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path):
    train = write_lines(tmp_path / "train.jsonl", [json.dumps(r) for r in TRAIN])
    test = write_lines(tmp_path / "test.jsonl", [json.dumps(r) for r in TEST])
    return train, test


def test_fixture_is_what_it_claims():
    # the reworded problem is no near-duplicate, the changed number is one
    assert fuzz.ratio(" ".join(normalize(TRAIN[2]["question"])), " ".join(normalize(T_WENG))) < 95
    assert fuzz.ratio(" ".join(normalize(TRAIN[1]["question"])), " ".join(normalize(T_BAKERY))) >= 95


def test_normalize_lowercases_and_turns_punctuation_into_spaces():
    assert normalize("What's  2+2?\n\tDone_now.") == ["what", "s", "2", "2", "done", "now"]
    assert normalize("  ?! ") == []


def test_word_ngrams_short_text_is_one_ngram():
    assert word_ngrams(["a", "b", "c"], 8) == {("a", "b", "c")}
    assert word_ngrams([], 8) == set()
    assert word_ngrams(list("abcd"), 3) == {("a", "b", "c"), ("b", "c", "d")}
    # two short questions overlap only when equal; a short test inside a long train does not
    assert ngram_matches([["x", "y"], ["x", "y", "z"], list("pqrstuvwxy")], [["x", "y"]], 8) == {(0, 0)}


def test_decontaminate_flags_each_case_by_the_right_methods():
    assert decontaminate(TRAIN, TEST) == EXPECTED


def test_pairs_follow_input_order_and_ids_may_be_integers():
    train = [{"id": 7, "question": T_WENG}, {"id": 3, "question": T_CLIPS}]
    test = [{"id": 10, "question": T_CLIPS}, {"id": 2, "question": T_WENG}]
    out = decontaminate(train, test, ngram=8, fuzzy_threshold=95)
    assert out["pairs"] == [[7, 2, "exact"], [7, 2, "ngram"], [7, 2, "fuzzy"],
                            [3, 10, "exact"], [3, 10, "ngram"], [3, 10, "fuzzy"]]
    assert out["flagged"] == 2 and out["by_method"] == {"ngram": 2, "fuzzy": 2, "exact": 2}


def test_repeated_ids_count_once_and_empty_inputs():
    train = [{"id": "x", "question": T_WENG}, {"id": "y", "question": "unrelated"}, {"id": "x", "question": T_WENG}]
    out = decontaminate(train, [{"id": "t", "question": T_WENG}, {"id": "t", "question": T_WENG + "!"}])
    assert out == {"flagged": 1, "by_method": {"ngram": 1, "fuzzy": 1, "exact": 1},
                   "pairs": [["x", "t", "exact"], ["x", "t", "ngram"], ["x", "t", "fuzzy"]]}
    empty = {"flagged": 0, "by_method": {"ngram": 0, "fuzzy": 0, "exact": 0}, "pairs": []}
    assert decontaminate([], TEST) == decontaminate(TRAIN, []) == empty
    assert decontaminate([{"id": 1, "question": "?!"}], [{"id": 2, "question": "..."}]) == empty


def test_other_field_and_id_field():
    train = [{"key": "x", "problem": T_BAKERY + " Explain."}]
    test = [{"key": "y", "problem": T_BAKERY}]
    out = decontaminate(train, test, field="problem", id_field="key")
    assert out == {"flagged": 1, "by_method": {"ngram": 1, "fuzzy": 1, "exact": 0},
                   "pairs": [["x", "y", "ngram"], ["x", "y", "fuzzy"]]}


@pytest.mark.parametrize("dense, workers", [(0.0, 1), (1.0, 1), (0.05, -1)])
def test_fuzzy_matches_equal_all_pairs_loop(monkeypatch, dense, workers):
    """The filtered, blocked search finds exactly the pairs of a plain loop over all pairs, with each
    block scored whole by cdist (dense 0), only the filter's pairs scored (dense 1), or either."""
    import cotshape.data.decontaminate as dc

    monkeypatch.setattr(dc, "_DENSE", dense)
    rng = random.Random(1)
    words = "the a of apples bought sold each more than twice half 12 7 café ünï".split()

    def text():
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, 14)))

    base = [text() for _ in range(60)]
    train = [rng.choice(base) + rng.choice(["", " x", "s", " of the", "é"]) for _ in range(700)] + [""]
    test = base + [""]
    for threshold in (100, 95, 85, 60, 0):
        loop = {(i, j) for i, a in enumerate(train) for j, b in enumerate(test)
                if a and b and fuzz.ratio(a, b) >= threshold}
        assert loop and fuzzy_matches(train, test, threshold, workers=workers) == loop, threshold


@pytest.mark.parametrize("kw, match", [({"ngram": 0}, "ngram: must be"),
                                       ({"fuzzy_threshold": 101}, "fuzzy_threshold: must be")])
def test_bad_options(kw, match):
    with pytest.raises(InputError, match=match):
        decontaminate(TRAIN, TEST, **kw)


def test_library_names_the_bad_record():
    with pytest.raises(RecordError, match=r"^test record 1: missing field 'question' \(fields: id, text\)$"):
        decontaminate(TRAIN, [TEST[0], {"id": "t9", "text": "x"}])


def test_cli_json_is_the_document(files, capsys):
    train, test = files
    assert main(["decontaminate", "--train", str(train), "--test", str(test), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == EXPECTED


def test_cli_table(files, capsys):
    train, test = files
    assert main(["decontaminate", "--train", str(train), "--test", str(test)]) == 0
    lines = capsys.readouterr().out.splitlines()
    counts = [(line.split("  ")[0].split()[0], line.rsplit("  ", 1)[1]) for line in lines[:4]]
    assert counts == [("exact", "1 train record(s) flagged"), ("ngram", "3 train record(s) flagged"),
                      ("fuzzy", "2 train record(s) flagged"), ("any", "3 train record(s) flagged")]
    assert [line.split() for line in lines[5:]] == [["train", "id", "test", "id", "method"]] + EXPECTED["pairs"]


def test_cli_nothing_flagged_exits_0(tmp_path, capsys):
    train = write_lines(tmp_path / "a.jsonl", [json.dumps(TRAIN[3])])
    test = write_lines(tmp_path / "b.jsonl", [json.dumps(r) for r in TEST])
    assert main(["decontaminate", "--train", str(train), "--test", str(test), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"flagged": 0, "by_method": {"ngram": 0, "fuzzy": 0, "exact": 0},
                                                    "pairs": []}


def test_cli_bad_json_line_is_one_error_line(files):
    train, test = files
    write_lines(test, [json.dumps(TEST[0]), '{"id": "t2", "question": oops}'])
    r = subprocess.run([sys.executable, "-m", "cotshape.cli", "decontaminate", "--train", str(train), "--test",
                        str(test)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [f"error: {test}:2: invalid JSON (Expecting value at column 26)"]


@pytest.mark.parametrize("line, message", [
    ('{"id": "t2", "text": "no question"}', "{path}:2: missing field 'question' (fields: id, text)"),
    ('{"question": "no id"}', "{path}:2: missing field 'id' (fields: question)"),
    ('["a list"]', "{path}:2: expected a JSON object, got list"),
    ('{"id": "t2", "question": 5}', "{path}:2: field 'question' must be a string, got int"),
    ('{"id": null, "question": "q"}', "{path}:2: field 'id' must be a string or an integer, got NoneType"),
])
def test_cli_bad_record_names_file_line_and_field(files, capsys, line, message):
    train, test = files
    write_lines(test, [json.dumps(TEST[0]), line])
    assert main(["decontaminate", "--train", str(train), "--test", str(test), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"error: {message.format(path=test)}\n"


def test_cli_missing_file_and_bad_option(files, tmp_path, capsys):
    train, _ = files
    missing = tmp_path / "nope.jsonl"
    assert main(["decontaminate", "--train", str(train), "--test", str(missing)]) == 2
    assert capsys.readouterr().err == f"error: {missing}: file not found\n"
    assert main(["decontaminate", "--train", str(train), "--test", str(train), "--ngram", "0"]) == 2
    assert capsys.readouterr().err == "error: --ngram: must be >= 1, got 0\n"
    assert main(["decontaminate", "--train", str(train), "--test", str(train), "--fuzzy-threshold", "nan"]) == 2
    assert capsys.readouterr().err.startswith("error: --fuzzy-threshold: must be in [0, 100]")


def test_read_records_blank_lines_skipped(tmp_path):
    path = write_lines(tmp_path / "r.jsonl", [json.dumps(TEST[0]), "", json.dumps(TEST[1])])
    assert [r["id"] for r in read_records(path)] == ["t1", "t2"]


def test_module_imports_no_torch_sft_or_generation():
    code = ("import sys, cotshape.data.decontaminate; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('cotshape.sft', 'cotshape.generation'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
