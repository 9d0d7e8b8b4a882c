"""The Markdown sections of the report's ``summary.md``, one function per section: each takes the
read metrics (:class:`~cotshape.reporting.report_data.Metrics`) and what the run compared, and
returns its text ("" when it has nothing to show, so :func:`~cotshape.reporting.report.build_report`
leaves it out). A new section is a function here and its line in ``build_report``'s list."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from cotshape.core.artifacts import parse_set_name
from cotshape.reporting.formatting import (
    DASH,
    NA,
    count,
    decimal,
    markdown_table,
    number,
    paired_points,
    pct,
    pct_interval,
)
from cotshape.reporting.report_data import BASE_SET, Metrics, skipped

#: what each training set is, for the table captions and the how-to-read note
SET_DESCRIPTIONS = {
    "base": "the untrained student",
    "H": "human-written solutions",
    "G": "teacher CoTs with a correct final answer",
    "W": "teacher CoTs with a wrong final answer",
    "P": "human solutions paraphrased by a model",
    "step": "CoTs with some steps corrupted",  # sets step-K: K steps per CoT (degrade.step_k)
}

HOW_TO_READ = """\
## How to read this

- **H vs G.** H is what humans wrote, G what the teacher model wrote (and got right). The
  paper's finding is that a student often learns more from G than from H: model-written
  reasoning is closer to the student's own distribution, so it is easier to imitate.
- **G vs W.** W holds teacher CoTs whose *final answer is wrong*. If W trains the student
  about as well as G, the shape of the reasoning matters more than its correctness.
- **P.** P is H rewritten by a model with the answer kept. If P beats H, the gain comes
  from the *style* (the distribution) of the text, not from new content.
- **Mixture curve.** A fraction p of correct CoTs is replaced by completely flawed ones. A
  flat curve means the student tolerates wrong reasoning in its training data; a drop only
  near p = 100 % means a few correct examples are enough.
- **Closeness.** The untrained student's mean per-token loss on each training set (lower =
  closer to what the student would write itself) and the first SFT losses. The paper's
  evidence: model-written sets (G, W, P) sit lower than H.
- **What each interval covers.** An accuracy's interval: another training run of that set,
  scored on another draw of test problems (runs as the unit; the untrained student: test
  problems only). A Δ between two sets and each claim's interval (C2-C6): another pair of
  training runs on the same teacher data, scored on another draw of test problems. A closeness
  interval (C1): another draw of the set's training examples, for the same untrained student.
  None of them covers another draw of teacher samples (`base.data_seed`): `cotshape compare`
  over data seeds does.
- **Two accuracies.** *accuracy* = correct / all test problems; *accuracy (parsed)* =
  correct / answers that parsed, the definition of the paper's released scripts (they drop
  unparsed answers). A big gap means the student often fails to give a final answer at all.
"""


def set_label(s: str) -> str:
    """A set's name for the tables: mixtures with their flawed share, step sets with what they are."""
    parsed = parse_set_name(s)
    if parsed.kind == "mix":
        return f"{s} ({100 * parsed.value:g} % flawed)"
    if parsed.kind == "step":  # degrade.step_k: one set per k
        k = parsed.value
        return f"{s} — {SET_DESCRIPTIONS['step']} ({k} step{'s' if k != 1 else ''} per CoT)"
    return s


def intro_section(m: Metrics, tasks: Sequence[str], trained: Sequence[str], context: dict[str, Any] | None,
                  notes: Sequence[str], claims: dict[str, Any] | None, comparisons: dict[str, Any] | None) -> str:
    """The title and what the report is, ``context`` and ``notes``, the claims with where their
    variance comes from, and one headline per task above the accuracy plot."""
    intro = [
        "# cotshape report",
        "",
        "A student fine-tuned on different kinds of chains of thought for the same problems — human "
        "solutions (H), teacher CoTs with correct (G) and wrong (W) answers, paraphrased human "
        "solutions (P), step-corrupted CoTs and mixtures with flawed CoTs — and evaluated with "
        "greedy decoding, after *Shape of Thought: When Distribution Matters More than Correctness "
        "in Reasoning Tasks*. A dash (—) marks a result that has not been produced.",
        "",
    ]
    if context:
        intro += [f"- **{k}**: {v}" for k, v in context.items()] + [""]
    intro += [*notes, ""] if notes else []
    if claims:
        intro += [claims_section(claims), variance_section(claims)]
    intro += ["**Headlines**", "", *_headlines(m, tasks, trained, comparisons), "", "![accuracy](accuracy.png)", ""]
    return "\n".join(intro)


def checkpoint_section(m: Metrics, tasks: Sequence[str], sets: Sequence[str], checkpoints: Sequence[int]) -> str:
    """Accuracy [95 % CI] of each intermediate checkpoint (``sft.save_steps``) next to the final
    model; "" without checkpoints. A step the run never reached shows as n/a."""
    if not checkpoints:
        return ""
    steps = sorted(int(n) for n in checkpoints)
    parts = ["## Intermediate checkpoints", "",
             "Accuracy [95 % CI] of the checkpoints saved after the listed optimizer steps (`sft.save_steps`), "
             "greedy, on the same test problems; n/a: the run ended before that step.", ""]

    def cell(ev: dict[str, Any] | None) -> str:
        return NA if skipped(ev) else DASH if ev is None else f"{pct(ev.get('accuracy'))} {pct_interval(ev)}"

    for t in tasks:
        rows = [[s, *(cell(m.checkpoint_eval(t, s, n)) for n in steps), cell(m.eval.get((t, s)))] for s in sets]
        parts += [f"### {t}", "", markdown_table(["set", *(f"step {n}" for n in steps), "final"], rows), ""]
    return "\n".join(parts)


def accuracy_section(m: Metrics, tasks: Sequence[str], sets: Sequence[str],
                     comparisons: dict[str, Any] | None = None) -> str:
    """Per task: each set's accuracy (both definitions) with its interval and paired differences,
    then one row per training run."""
    parts = [
        "## Accuracy (greedy decoding on the test problems)",
        "",
        "Each set was trained several times (`sft.runs`, or `sft.runs_by_set` for the sets it names; SFT "
        "seeds base.sft_seed + R) and every run was "
        "evaluated on the same test problems. *accuracy* is the mean over the runs; its 95 % interval "
        "covers another training run on another draw of test problems (random effects over the runs, "
        "Wilson se per run; the untrained base student is one run: Wilson). A Δ is paired: run R of one "
        "set against run R of the other on the same problems (of two sets trained a different number of "
        "times, the runs both have); its interval covers another pair of "
        "training runs (random effects over the run-level Newcombe differences). The per-run table "
        "below lists every run.",
        "",
    ]
    for t in tasks:
        rows_sets = [BASE_SET, *sets]
        cmp = (comparisons or {}).get(t, {})
        has_pass = any(m.eval_value(t, s, "pass@1") is not None for s in rows_sets)
        header = ["set", "accuracy", "95 % CI", "accuracy (parsed)", "parse rate", "runs", "n",
                  "Δ vs base [95 % CI]", "Δ vs H [95 % CI]"]
        if has_pass:
            header.insert(4, "pass@1")
        rows = []
        for s in rows_sets:
            label = f"{s} — {SET_DESCRIPTIONS[s]}" if s in SET_DESCRIPTIONS else set_label(s)
            if m.eval_skipped(t, s):
                rows.append([f"{label} (skipped: empty training set)"] + [NA] * (len(header) - 1))
                continue
            ev = m.eval.get((t, s))
            g = (ev or {}).get
            c = cmp.get(s, {})
            row = [
                label,
                pct(g("accuracy")),
                pct_interval(ev),
                pct(g("accuracy_parsed")) + (" (none parsed)" if g("no_parsed_answers") is True else ""),
                pct(g("parse_rate")),
                count(g("runs") or (1 if ev else None)),
                count(g("n")),
                paired_points(c.get("vs_base")),
                paired_points(c.get("vs_H")),
            ]
            if has_pass:
                row.insert(4, pct(g("pass@1")))
            rows.append(row)
        parts += [f"### {t}", "", markdown_table(header, rows), ""]
        parts += _per_run_table(m, t, rows_sets, cmp)
    return "\n".join(parts)


def _per_run_table(m: Metrics, task: str, sets: Sequence[str], cmp: dict[str, Any]) -> list[str]:
    """One row per training run of each set: its accuracy [Wilson] and its paired Δ vs H
    [Newcombe], the test-problem intervals of that one run."""
    rows = []
    for s in sets:
        runs = m.eval_value(task, s, "per_run") or []
        vs_h = (cmp.get(s) or {}).get("vs_H") or {}
        for r, ev in enumerate(runs):
            d = (vs_h.get("per_run") or [])[r:r + 1]
            ci = (vs_h.get("per_run_ci95") or [])[r:r + 1]
            delta = (f"{100 * d[0]:+.1f} pts [{100 * ci[0][0]:+.1f}, {100 * ci[0][1]:+.1f}]" if d and ci else DASH)
            rows.append([s, str(r), pct(ev.get("accuracy")), pct_interval(ev), count(ev.get("n_correct")), delta])
    if not rows:
        return []
    return ["Per training run (each run's own 95 % intervals: Wilson; Δ vs H paired with H's run of the same "
            "index, Newcombe):", "",
            markdown_table(["set", "run", "accuracy", "95 % CI", "correct", "Δ vs H [95 % CI]"], rows), ""]


_VERDICT_MARK = {"holds": "**holds**", "contradicted": "**contradicted**", "inconclusive": "inconclusive"}


def _evidence_text(c: dict[str, Any]) -> str:
    ev = c.get("evidence") or {}
    if "missing" in ev:
        return f"not measured: {ev['missing']}"
    if "parts" in ev:
        bits = []
        for name, part in ev["parts"].items():
            lo, hi = part["ci95"]
            bits.append(f"loss(H) − loss({name}) = {part['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        return "; ".join(bits)
    interval = (f"[{100 * ev['ci95'][0]:+.1f}, {100 * ev['ci95'][1]:+.1f}]" if ev.get("ci95")
                else f"(no interval: {ev.get('reason', 'one training run')})")
    runs = ev.get("runs", 1)
    per_run = ", ".join(f"{100 * d:+.1f}" for d in ev.get("per_run") or [])
    se = (f"; se: test problems {100 * ev['se_test']:.1f}, runs {100 * ev['se_runs']:.1f} pts"
          if ev.get("se_runs") is not None else "")
    spread = f"; per run: {per_run}{se}" if runs > 1 else ""
    if c["id"] == "C6":
        return (f"slope {100 * ev['diff']:+.1f} pts per unit fraction {interval} over "
                f"{', '.join(f'{100 * p:g} %' for p in ev['fractions'])}, {runs} run(s) per set"
                + (" (runs 0.." + str(runs - 1) + " of each; trained: "
                   + ", ".join(f"{k} {v}" for k, v in ev["runs_by_set"].items()) + ")" if ev.get("runs_by_set") else "")
                + f", n = {ev['n']}{spread}")
    arms = (f"{runs} paired runs (trained: {ev['a']} {ev['runs_a']}, {ev['b']} {ev['runs_b']})" if "runs_a" in ev
            else f"{runs} run(s) per arm")
    text = f"{ev['b']} − {ev['a']} = {100 * ev['diff']:+.1f} pts {interval}, {arms}, n = {ev['n']}{spread}"
    if c["kind"] == "equivalent":
        text += f", margin ±{100 * ev['margin']:g} pts"
    return text


def claims_section(claims: dict[str, Any]) -> str:
    """The paper's claims with their verdicts and evidence (:func:`cotshape.evaluation.claims.judge_run`)."""
    rows = [[c["id"], c["task"], c["statement"], _VERDICT_MARK.get(c["verdict"], c["verdict"]),
             _evidence_text(c) + (f"; {c['contamination']['note']}" if c.get("contamination") else "")]
            for c in claims.get("claims", [])]
    return "\n".join([
        "## The paper's claims on this run",
        "",
        "A claim *holds* when the 95 % interval of its difference excludes the alternative, is "
        "*contradicted* when the interval excludes the claim, and is *inconclusive* otherwise (a tie, "
        "or too few runs or test problems to tell). The accuracy claims (C2-C6) are about training on a "
        "set, so their interval takes the training run as the unit: it covers another set of SFT runs "
        "on this run's data and another draw of test problems, not another draw of teacher data (that "
        "needs `cotshape compare` over data seeds). C1's interval covers another draw of training "
        "examples for the same student (bootstrap). The numbers are also in `metrics/claims.json`.",
        "",
        markdown_table(["claim", "task", "statement", "verdict", "evidence (95 % CI)"], rows, "lllll"),
        "",
    ])


def variance_section(claims: dict[str, Any] | None) -> str:
    """Where the run-to-run variance comes from (:func:`cotshape.evaluation.claims.variance_breakdown`)
    and the power of the run: the half-width of G - H's run-level interval."""
    variance = (claims or {}).get("variance") or {}
    parts = []
    for t, v in variance.items():
        rows = []
        for kind, items in (("claim", v.get("claims") or {}), ("set", v.get("sets") or {})):
            for name, vc in items.items():
                b, sft = vc["parts"]["binomial"], vc["parts"]["sft"]
                label = f"{name} ({vc['contrast']})" if kind == "claim" else f"accuracy of {name}"
                rows.append([label, count(vc["runs"][0]), f"{100 * math.sqrt(vc['within']):.1f}",
                             f"{100 * b['sd']:.1f}", f"{100 * sft['sd']:.1f}", f"{100 * sft['share']:.0f} %"])
        pw = v.get("power")
        if not rows and not pw:
            continue
        parts += [f"### {t}", ""]
        if rows:
            parts += [markdown_table(["number", "runs", "sd over runs (pts)", "test problems: sd (pts)", "SFT seed: sd (pts)",
                              "SFT share of the variance"], rows), ""]
        if pw:
            parts += [f"Power: the run-level 95 % interval of {pw['claim']} (G − H) is ±{100 * pw['half_width']:.1f} "
                      f"points wide with {pw['runs']} training runs per arm: a smaller true difference cannot be "
                      "told from 0 by this run.", ""]
    if not parts:
        return ""
    return "\n".join([
        "## Where the variance comes from",
        "",
        "Each number's variance from one run to another, by source (method of moments, "
        "`cotshape.core.random_effects.variance_components`): the SFT seed (the spread of this run's training runs, "
        "which all answered the same test problems) and the test problems (the mean squared Wilson or "
        "Newcombe se of one run: what another draw of test problems would move it). All runs share one "
        "data draw, so the data seed's part is not in these numbers: `cotshape compare` over "
        "`-S base.data_seed=N` experiments, or scripts/variance_breakdown.py against whole-pipeline "
        "seeds, measures it.",
        "",
        *parts,
    ])


def mixture_section(m: Metrics, tasks: Sequence[str], curve: Sequence[tuple[float, str]]) -> str:
    """Accuracy at each flawed fraction of the mixture curve, the tasks side by side."""
    header = ["flawed fraction"]
    for t in tasks:
        header += [f"{t} accuracy", f"{t} accuracy (parsed)"]
    rows = []
    for p, name in curve:
        row = [f"{100 * float(p):g} %" + (f" ({name})" if p == 0 else "")]
        for t in tasks:
            if m.eval_skipped(t, name):
                row += [NA, NA]
                continue
            row += [pct(m.eval_value(t, name, "accuracy")), pct(m.eval_value(t, name, "accuracy_parsed"))]
        rows.append(row)
    return "\n".join(
        [
            "## Flawed mixtures (accuracy vs fraction of completely flawed CoTs)",
            "",
            markdown_table(header, rows),
            "",
            "![mixture curve](mixture_curve.png)",
            "",
        ]
    )


def closeness_section(m: Metrics, tasks: Sequence[str], trained: Sequence[str]) -> str:
    """Per task: the untrained student's loss on each training set, next to the first SFT loss."""
    parts = [
        "## Distributional closeness (the untrained student on each training set)",
        "",
        "Lower loss = closer to the student's own distribution. *first SFT loss* is the mean of the "
        "first logged training losses when the student is fine-tuned on the set.",
        "",
    ]
    for t in tasks:
        close = m.closeness[t] or {}
        order = list(trained) + [s for s in close if s not in trained]
        rows = []
        for s in order:
            c = close.get(s) if isinstance(close.get(s), dict) else {}
            sft = m.sft.get((t, s)) or {}
            rows.append(
                [
                    set_label(s),
                    decimal(c.get("mean_loss")),
                    decimal(c.get("perplexity"), 2),
                    decimal(sft.get("first_loss")),
                    count(c.get("n_tokens")),
                    count(c.get("n_examples")),
                ]
            )
        header = ["set", "mean loss / token", "perplexity", "first SFT loss", "tokens", "examples"]
        parts += [f"### {t}", "", markdown_table(header, rows), ""]
    parts += ["![closeness](closeness.png)", ""]
    return "\n".join(parts)


def training_section(m: Metrics, tasks: Sequence[str], trained: Sequence[str]) -> str:
    """Per task: each set's SFT run (examples, steps, losses, throughput)."""
    parts = ["## Fine-tuning runs", ""]
    header = ["set", "examples", "steps", "first loss", "final loss", "train tokens", "tokens/s"]
    for t in tasks:
        rows = []
        for s in trained:
            sft = m.sft.get((t, s)) or {}
            if skipped(sft):
                rows.append([f"{set_label(s)} (skipped: empty training set)", "0"] + [NA] * (len(header) - 2))
                continue
            rows.append(
                [
                    set_label(s),
                    count(sft.get("examples")),
                    count(sft.get("steps")),
                    decimal(sft.get("first_loss")),
                    decimal(sft.get("final_loss")),
                    count(sft.get("train_tokens")),
                    decimal(sft.get("tokens_per_second"), 1),
                ]
            )
        parts += [f"### {t}", "", markdown_table(header, rows), ""]
    parts += ["![loss curves](loss_curves.png)", ""]
    return "\n".join(parts)


def _paraphrase_closeness(c: dict | None) -> str:
    """The paraphrase stage's ``closeness_to_student`` as one cell."""
    if not c or c.get("loss_P") is None:
        return NA
    lo, hi = c["H_minus_P_ci95"]
    return f"{c['loss_P']:.3f} / {c['loss_H']:.3f} ({c['H_minus_P']:+.3f} [{lo:+.3f}, {hi:+.3f}], {c['problems']} problems)"


def data_section(m: Metrics, tasks: Sequence[str]) -> str:
    """The training data per task: the selection counts, the teacher's accuracy, the paraphrase
    success; a note for a step set that repeats a smaller k."""
    header = [
        "task",
        "problems",
        "with a correct sample",
        "with a wrong sample",
        "with both",
        "G selected",
        "W selected",
        "teacher accuracy",
        "paraphrase success",
        "P fell back to H",
        "student's loss: paraphrases / their H (H − P [95 % CI])",
    ]
    rows = []
    for t in tasks:
        sel = m.select[t] or {}
        ver = m.verify[t] or {}
        par = m.paraphrase[t] or {}
        rows.append(
            [
                t,
                count(sel.get("problems")),
                count(sel.get("with_correct")),
                count(sel.get("with_wrong")),
                count(sel.get("with_both")),
                count(sel.get("selected_G")),
                count(sel.get("selected_W")),
                pct(ver.get("teacher_accuracy", ver.get("accuracy"))),
                pct(par.get("success_rate")),
                pct(par.get("fallback_share")) if par.get("fallback_share") is not None else NA,
                _paraphrase_closeness(par.get("closeness_to_student")),
            ]
        )
    notes = []
    for t in tasks:
        deg = m.degrade[t] or {}
        size, short = deg.get("size"), deg.get("fewer_steps_than_k") or {}
        for name, n in short.items():
            parsed = parse_set_name(name)
            k = parsed.value if parsed.kind == "step" else name
            if n and size:
                notes.append(f"- {t} {name}: {n} of {size} CoTs have fewer than {k} reasoning steps, so all of "
                             "their steps are corrupted: for them this set holds the same text as at the next "
                             "smaller k.")
    return "\n".join(
        [
            "## Training data",
            "",
            "Teacher samples per training problem, split by the verifier into correct (G) and wrong (W); "
            "the paraphrase success rate is the share of paraphrases that kept the final answer; where a "
            "paraphrase failed, P holds the human solution instead (`paraphrase.on_failure: keep_original`): "
            "the share of P that fell back to H. The last column is the untrained student's loss per token "
            "on the paraphrases that kept their answer and on the human solutions of the same problems "
            "(H − P > 0: the paraphrase moved H towards the student, what P is for).",
            "",
            markdown_table(header, rows),
            "",
            *([*notes, ""] if notes else []),
        ]
    )


def contamination_section(m: Metrics, tasks: Sequence[str]) -> str:
    """What decontaminate@T flagged per task and set, by check, with a few examples; empty when
    the stage has not run."""
    from cotshape.core.artifacts import set_sort_key
    from cotshape.data.decontaminate import SET_METHODS

    parts = []
    for t in tasks:
        doc = m.decontaminate.get(t)
        if not doc:
            continue
        checks = doc.get("checks") or list(SET_METHODS)
        per_set = sorted((doc.get("sets") or {}).items(), key=lambda kv: set_sort_key(kv[0], ("H", "G", "W", "P")))
        rows = [[name, count(s.get("records")), f"{count(s.get('flagged'))} ({pct(s.get('share'))})",
                 *(count((s.get("by_method") or {}).get(k)) for k in checks)]
                for name, s in per_set]
        dropped = (f"`decontaminate.action: drop`: {doc.get('dropped')} of {doc.get('compared')} problems left out "
                   f"of every set, SFT trained on {doc.get('trained')}." if doc.get("action") == "drop" else
                   "`decontaminate.action: report`: nothing was dropped; every claim computed on a flagged set "
                   "says so in `metrics/claims.json` (`contamination`).")
        examples = [f"`{e['problem_id']}` ~ test `{e['test_id']}` ({e['method']})"
                    for _, s in per_set for e in s.get("examples") or []][:5]
        parts += [f"**{t}**: {count(doc.get('flagged_problems'))} of {count(doc.get('compared'))} training problems "
                  f"flagged in some set against {count(doc.get('test_problems'))} test problems "
                  f"(word {doc.get('ngram')}-grams, fuzz.ratio >= {doc.get('fuzzy_threshold'):g}). {dropped}", "",
                  markdown_table(["set", "records", "flagged", *checks], rows, "l" + "r" * (2 + len(checks))),
                  ""]
        if examples:
            parts += ["Examples: " + "; ".join(examples) + ".", ""]
    if not parts:
        return ""
    return "\n".join([
        "## Test-set overlap",
        "",
        "Every training set against the task's test problems (decontaminate@T): the question by exact "
        "match, shared word n-gram and fuzzy ratio; the completion by a distinctive word n-gram (held by "
        "at most 1 % of the test items, so not boilerplate) shared with a test question or solution, and "
        "exact match with a solution; the task's structure (Countdown: numbers and target, its only "
        "check, since its question and derivation are generated from them; MBPP: the tests). A record is "
        "flagged when any check flags it.",
        "",
        *parts,
    ])


def _headlines(m: Metrics, tasks: Sequence[str], sets: Sequence[str],
               comparisons: dict[str, Any] | None = None) -> list[str]:
    """One line per task: the base student with its interval and the sets that beat it (and H)
    beyond noise; no "best set" is picked out of a tie."""
    lines = []
    for t in tasks:
        base = m.eval.get((t, BASE_SET))
        scored = [s for s in sets if number(m.eval_value(t, s, "accuracy")) is not None]
        if not scored:
            lines.append(f"- **{t}**: no trained student evaluated yet.")
            continue
        cmp = (comparisons or {}).get(t, {})

        def beyond(key: str, side: int, scored=scored, cmp=cmp) -> list[str]:
            """Sets whose paired interval against ``key`` lies wholly above (side 1) or below (-1) 0."""
            out = []
            for s in scored:
                lo, hi = (cmp.get(s, {}).get(key) or {}).get("ci95") or [0.0, 0.0]
                if (side > 0 and lo > 0) or (side < 0 and hi < 0):
                    out.append(s)
            return out

        base_txt = f"base student {pct((base or {}).get('accuracy'))} {pct_interval(base)}" if base else "base student —"
        up, up_h, down_h = beyond("vs_base", 1), beyond("vs_H", 1), beyond("vs_H", -1)
        lines.append(
            f"- **{t}**: {base_txt}; above the base student beyond noise: {', '.join(up) or 'none'}; "
            f"above H: {', '.join(up_h) or 'none'}; below H: {', '.join(down_h) or 'none'} "
            f"(paired 95 % intervals over the training runs; the others are ties)."
        )
    return lines


def steps_section(tasks: Sequence[str], comparisons: dict[str, Any] | None) -> str:
    """Step-level correctness of the training sets (:mod:`cotshape.data.steps`)."""
    rows = []
    for t in tasks:
        for s, st in ((comparisons or {}).get(t, {}).get("_steps") or {}).items():
            rows.append([t, s, count(st.get("cots")), count(st.get("steps")), count(st.get("correct_steps")),
                         pct(st.get("step_accuracy")), decimal(st.get("mean_steps_per_cot"), 2)])
    if not rows:
        return ""
    return "\n".join([
        "## Step-level correctness of the training sets",
        "",
        "Every checkable arithmetic step (`a op b = c`) in the chains of thought, recomputed exactly. "
        "W's final answers are wrong by construction; its share of correct steps says how much valid "
        "reasoning it still carries.",
        "",
        markdown_table(["task", "set", "CoTs", "steps", "correct steps", "step accuracy", "steps per CoT"], rows, "llrrrrr"),
        "",
    ])
