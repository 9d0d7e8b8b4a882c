"""Decontamination (cotshape/data/decontaminate.py, ``cotshape decontaminate``) on literal fixtures."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
from conftest import REPO_ROOT
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

    monkeypatch.setattr(dc, "DENSE_SHARE", dense)
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


# ---- the decontaminate@T stage: every training set against the test problems ------------------

def problem(pid, question, solution="", **meta):
    return {"id": pid, "task": "gsm8k", "question": question, "answer": "1", "solution": solution,
            "tests": [], "meta": meta}


SOL_T2 = ("The bakery sells 120 - 15 = 105 loaves of bread at 3 dollars each, so it earns 105 * 3 = 315 dollars. "
          "The answer is 315.")
TEST_PROBLEMS = [problem("t1", T_CLIPS), problem("t2", T_BAKERY, SOL_T2), problem("t3", T_WENG)]
TRAIN_PROBLEMS = [problem(r["id"], r["question"]) for r in TRAIN]


def rec(pid, completion, set_name="G"):
    return {"task": "gsm8k", "set": set_name, "problem_id": pid, "prompt": [], "completion": completion}


def test_check_sets_flags_each_record_by_what_it_copies():
    from cotshape.data.decontaminate import check_sets

    sets = {
        # questions: a_exact (exact, 8-gram, fuzzy), b_number (8-gram, fuzzy), c_reworded (8-gram)
        "G": [rec(r["id"], "We add the numbers. The answer is 1.") for r in TRAIN],
        # d_unrelated's completion writes out t2's worked solution: a completion n-gram and an exact copy
        "W": [rec("d_unrelated", SOL_T2, "W")],
    }
    found = check_sets(TRAIN_PROBLEMS, sets, TEST_PROBLEMS, examples=10)
    g, w = found["sets"]["G"], found["sets"]["W"]
    assert g["records"] == 4 and g["flagged"] == 3 and g["share"] == 0.75
    assert g["by_method"] == {"question_exact": 1, "question_ngram": 3, "question_fuzzy": 2,
                              "completion_ngram": 0, "completion_exact": 0}
    assert found["checks"] == ["question_exact", "question_ngram", "question_fuzzy", "completion_ngram",
                               "completion_exact"]
    assert {"problem_id": "a_exact", "test_id": "t1", "method": "question_exact"} in g["examples"]
    assert {"problem_id": "c_reworded", "test_id": "t3", "method": "question_ngram"} in g["examples"]
    assert w["flagged"] == 1 and w["by_method"]["completion_ngram"] == 1 and w["by_method"]["completion_exact"] == 1
    assert w["examples"][0] == {"problem_id": "d_unrelated", "test_id": "t2", "method": "completion_ngram"}
    assert found["flagged_problems"] == ["a_exact", "b_number", "c_reworded", "d_unrelated"]
    # examples are capped
    assert len(check_sets(TRAIN_PROBLEMS, sets, TEST_PROBLEMS, examples=2)["sets"]["G"]["examples"]) == 2


def test_completion_boilerplate_is_not_a_copy():
    """An n-gram most test solutions share ("... so the final answer is N") flags nothing; one
    only a single test solution holds does."""
    from cotshape.data.decontaminate import check_sets

    tail = "so the final answer is the number we found above"
    tests = [problem(f"t{i}", f"Question number {i} about apples and pears.", f"Work {i} here, {tail} {i}.")
             for i in range(200)]
    tests[7]["solution"] = "Seven crates of twelve pears make eighty four pears in all at the market."
    sets = {"G": [rec("p1", f"We work it out, {tail} 999."),
                  rec("p2", "Seven crates of twelve pears make eighty four pears in all today.")]}
    found = check_sets([problem("p1", "Alpha?"), problem("p2", "Beta?")], sets, tests)
    assert found["sets"]["G"]["by_method"]["completion_ngram"] == 1
    assert found["sets"]["G"]["examples"] == [{"problem_id": "p2", "test_id": "t7", "method": "completion_ngram"}]


def test_check_sets_structure_countdown_same_numbers_and_target():
    from cotshape.data.decontaminate import check_sets
    from cotshape.tasks import get_task

    task = get_task("countdown")

    def cd(pid, numbers, target, question):
        return {**problem(pid, question), "task": "countdown", "meta": {"numbers": numbers, "target": target}}

    tests = [cd("t", [3, 5, 7], 22, "Using 3, 5 and 7 once each, make 22.")]
    train = [cd("same", [7, 3, 5], 22, "Reach the target twenty-two from seven, three and five."),
             cd("other", [7, 3, 5], 23, "Reach the target twenty-three from seven, three and five.")]
    found = check_sets(train, {"G": [rec("same", "x"), rec("other", "x")]}, tests, structure_key=task.structure_key,
                       text=task.decontaminate_text)
    assert found["sets"]["G"]["by_method"] == {"structure": 1}
    assert found["checks"] == ["structure"]
    assert found["flagged_problems"] == ["same"]
    # without the task's key no structure check runs
    assert check_sets(train, {"G": [rec("same", "x")]}, tests)["flagged_problems"] == []


def test_mbpp_structure_key_is_the_tests():
    from cotshape.tasks import get_task

    mbpp = get_task("mbpp")
    a = {**problem("a", "Write f."), "tests": ["assert f(1) == 2", "assert  f(2) == 3"]}
    b = {**problem("b", "A function f adding one."), "tests": ["assert f(2) == 3", "assert f(1) == 2"]}
    assert mbpp.structure_key(a) == mbpp.structure_key(b)
    assert mbpp.structure_key({**a, "tests": []}) is None


def _stage_dir(tmp_path, action):
    import yaml

    from cotshape.core.records import write_json, write_jsonl

    d = tmp_path / "data"
    write_jsonl(d / "train.jsonl", TRAIN_PROBLEMS)
    write_jsonl(d / "test.jsonl", TEST_PROBLEMS)
    sets = d / "sets"
    ids = [r["id"] for r in TRAIN]
    for name in ("H", "G", "W", "P"):
        write_jsonl(sets / f"{name}.jsonl", [rec(i, "We add. The answer is 1.", name) for i in ids])
    write_jsonl(sets / "mix" / "mix-0.5.jsonl", [rec(i, "Wrong. The answer is 2.", "mix-0.5") for i in ids])
    (sets / "step").mkdir()
    write_json(sets / "ids.json", {"problem_ids": ids, "n": len(ids), "policy": "test"})
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["decontaminate"]["action"] = action
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return d


@pytest.mark.parametrize("action", ["report", "drop"])
def test_stage_writes_train_ids_and_metrics(tmp_path, action):

    d = _stage_dir(tmp_path, action)
    env = dict(os.environ, COTSHAPE_PARAMS=str(tmp_path / "params.yaml"))
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "decontaminate.py"), "--task", "gsm8k",
                           "--problems", str(d / "train.jsonl"), "--test", str(d / "test.jsonl"),
                           "--sets-dir", str(d / "sets"), "--ids", str(d / "sets" / "ids.json"),
                           "--ids-out", str(d / "sets" / "train_ids.json"), "--metrics", str(tmp_path / "m.json")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((tmp_path / "m.json").read_text())
    kept = json.loads((d / "sets" / "train_ids.json").read_text())["problem_ids"]
    assert list(m["sets"]) == ["G", "H", "P", "W", "mix-0.5"]  # sorted keys (write_json); the report orders them
    assert all(s["flagged"] == 3 for s in m["sets"].values())  # the questions: a, b, c
    assert m["flagged_problems"] == 3 and m["compared"] == 4
    if action == "report":
        assert kept == ["a_exact", "b_number", "c_reworded", "d_unrelated"] and m["dropped"] == 0
    else:  # every set loses the same problems: the sets stay equal
        assert kept == ["d_unrelated"] and m["dropped"] == 3 and m["trained"] == 1
    assert "problems flagged in some set" in proc.stdout


def test_stage_bad_action_is_one_error_naming_the_key(tmp_path):
    import yaml

    from cotshape.core.config import validate_params
    from cotshape.core.errors import ParamsError

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["decontaminate"]["action"] = "delete"
    with pytest.raises(ParamsError, match="decontaminate.action"):
        validate_params(params)
