"""A claim computed on sets the decontaminate stage flagged says so, and the report shows the overlap."""

from __future__ import annotations

from cotshape.evaluation.claims import claim_sets, contamination

DOC = {"action": "report", "compared": 4, "flagged_problems": 2, "dropped": 0, "trained": 4, "test_problems": 3,
       "ngram": 8, "fuzzy_threshold": 95.0,
       "sets": {"H": {"records": 4, "flagged": 2, "share": 0.5, "by_method": {"question_ngram": 2}, "examples": []},
                "G": {"records": 4, "flagged": 0, "share": 0.0, "by_method": {}, "examples": []},
                "W": {"records": 4, "flagged": 0, "share": 0.0, "by_method": {}, "examples": []},
                "mix-0.5": {"records": 4, "flagged": 1, "share": 0.25, "by_method": {"completion_ngram": 1},
                            "examples": [{"problem_id": "a", "test_id": "t1", "method": "completion_ngram"}]}}}


def test_claim_sets_per_kind():
    assert claim_sets({"evidence": {"a": "H", "b": "G"}}, "G") == ["H", "G"]
    assert claim_sets({"evidence": {"parts": {"G": {}, "W": {}}}}, "G") == ["G", "W", "H"]
    assert claim_sets({"evidence": {"fractions": [0.0, 0.5]}}, "G") == ["G", "mix-0.5"]
    assert claim_sets({"evidence": {"a": "base", "b": "G"}}, "G") == ["G"]


def test_a_claim_on_a_flagged_set_says_so_and_a_clean_one_does_not():
    g_vs_h = contamination({"evidence": {"a": "H", "b": "G"}}, DOC, "G")
    assert g_vs_h["flagged"] == {"H": 2} and "H 2/4" in g_vs_h["note"]
    assert contamination({"evidence": {"a": "W", "b": "G"}}, DOC, "G") is None
    assert contamination({"evidence": {"fractions": [0.0, 0.5]}}, DOC, "G")["flagged"] == {"mix-0.5": 1}
    assert contamination({"evidence": {"a": "H", "b": "G"}}, None, "G") is None


def test_drop_names_how_many_problems_left_every_set():
    doc = {**DOC, "action": "drop", "dropped": 2, "trained": 2}
    found = contamination({"evidence": {"a": "W", "b": "G"}}, doc, "G")
    assert found == {"action": "drop", "dropped": 2, "trained": 2,
                     "note": "2 problems flagged by decontaminate were left out of every set before SFT"}
    assert contamination({"evidence": {"a": "W", "b": "G"}}, {**doc, "dropped": 0}, "G") is None


def test_report_section_reads_the_stage_metrics(tmp_path):
    from cotshape.core.records import write_json
    from cotshape.reporting.report_data import Metrics
    from cotshape.reporting.sections import contamination_section

    write_json(tmp_path / "decontaminate" / "gsm8k.json", DOC)
    m = Metrics(tmp_path, tmp_path / "plots", ["gsm8k"], ["base", "H"])
    text = contamination_section(m, ["gsm8k"])
    assert text.startswith("## Test-set overlap")
    assert "**gsm8k**: 2 of 4 training problems flagged in some set against 3 test problems" in text
    assert "| mix-0.5 |" in text.replace("  ", " ") or "mix-0.5" in text
    assert "`a` ~ test `t1` (completion_ngram)" in text
    assert contamination_section(Metrics(tmp_path / "none", tmp_path, ["gsm8k"], ["base"]), ["gsm8k"]) == ""
