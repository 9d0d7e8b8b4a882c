"""The experiment report: the tables and plots a researcher came for, built from the metrics
the stages wrote.

:func:`build_report` reads this layout under ``metrics_dir`` (``metrics/stages`` in dvc.yaml);
every file is optional: a missing one shows as "—" in the tables and as a gap in the plots, so a
partly-run pipeline still gets a report::

    eval/{task}-{set}.json          score() of cotshape.evaluation.evaluate; set in H, G, W, P, step-K,
                                    mix-{p} (p as a Python float: mix-0.0 ... mix-1.0), base
    sft/{task}-{set}.json           train_loss, first_loss, final_loss, steps, train_tokens,
                                    tokens_per_second, examples
    closeness/{task}.json           {set: {mean_loss, perplexity, n_tokens, n_examples}}
    select/{task}.json              problems, with_correct, with_wrong, with_both,
                                    selected_G, selected_W
    paraphrase/{task}.json          success_rate, ...
    verify/{task}.json              the teacher's accuracy on its own samples
    degrade/{task}.json             size, fewer_steps_than_k (step-K sets: CoTs with < K steps)
    plots/loss/{task}-{set}.csv     step,loss (under ``plots_dir``)

and writes, each file atomically: ``summary.md`` (tables and a how-to-read note, with the plots
embedded), ``accuracy.png``, ``mixture_curve.png``, ``loss_curves.png``, ``closeness.png`` in
``out_dir``, and the long-format tables of dvc.yaml's top-level plots in ``plots/summary/``
(:func:`summary_csvs`). A file that exists but is malformed is an error naming it (a
:class:`~cotshape.core.records.RecordError`): a silently wrong report is worse than none.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cotshape.core.artifacts import parse_set_name
from cotshape.core.config import set_name
from cotshape.core.records import RecordError, atomic_path, read_json, write_text
from cotshape.reporting.formatting import DASH, NA
from cotshape.reporting.formatting import markdown_table as _table
BASE_SET = "base"

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


# ---- reading ----------------------------------------------------------------------------

def _read_optional(path: Path) -> dict[str, Any] | None:
    """A metrics JSON object, or None when the file does not exist (the stage has not run)."""
    if not path.exists():
        return None
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise RecordError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_loss_csv(path: str | os.PathLike) -> list[list[tuple[float, float]]] | None:
    """The loss curve of every training run of a set, ``[[(step, loss), ...] per run]``, from a loss
    log with the header ``run,step,loss`` (or ``step,loss``: one run); None when it is missing."""
    path = Path(path)
    if not path.exists():
        return None
    runs: dict[int, list[tuple[float, float]]] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, None) or []]
        if header not in (["run", "step", "loss"], ["step", "loss"]):
            raise RecordError(f"{path}:1: expected the header 'run,step,loss', got {','.join(header)!r}")
        with_run = header[0] == "run"
        for lineno, row in enumerate(reader, 2):
            if not row or not "".join(row).strip():
                continue
            try:
                run = int(row[0]) if with_run else 0
                runs.setdefault(run, []).append((float(row[-2]), float(row[-1])))
                if len(row) != len(header):
                    raise ValueError
            except (ValueError, IndexError):
                raise RecordError(f"{path}:{lineno}: expected {','.join(header)!r} numbers, got {','.join(row)!r}") from None
    return [runs[r] for r in sorted(runs)]


class _Metrics:
    """Every metrics file of the report, read once."""

    def __init__(self, metrics_dir: Path, plots_dir: Path, tasks: Sequence[str], eval_sets: Sequence[str]):
        self.eval = {
            (t, s): _read_optional(metrics_dir / "eval" / f"{t}-{s}.json") for t in tasks for s in eval_sets
        }
        trained = [s for s in eval_sets if s != BASE_SET]
        self.sft = {(t, s): _read_optional(metrics_dir / "sft" / f"{t}-{s}.json") for t in tasks for s in trained}
        self.loss = {(t, s): read_loss_csv(plots_dir / "loss" / f"{t}-{s}.csv") for t in tasks for s in trained}
        self.closeness = {t: _read_optional(metrics_dir / "closeness" / f"{t}.json") for t in tasks}
        self.select = {t: _read_optional(metrics_dir / "select" / f"{t}.json") for t in tasks}
        self.paraphrase = {t: _read_optional(metrics_dir / "paraphrase" / f"{t}.json") for t in tasks}
        self.verify = {t: _read_optional(metrics_dir / "verify" / f"{t}.json") for t in tasks}
        self.degrade = {t: _read_optional(metrics_dir / "degrade" / f"{t}.json") for t in tasks}

    def eval_skipped(self, task: str, set_: str) -> bool:
        return _skipped(self.eval.get((task, set_)))

    def eval_value(self, task: str, set_: str, key: str) -> Any:
        """A value of an eval metrics file; None when the file is missing or was skipped."""
        m = self.eval.get((task, set_))
        return None if m is None or _skipped(m) else m.get(key)

    def eval_interval(self, task: str, set_: str) -> tuple[float, float, float] | None:
        """``(accuracy, lo, hi)``: the accuracy and its 95 % interval (the accuracy itself for a
        file without ``ci95``); None when there is no result."""
        acc = _num(self.eval_value(task, set_, "accuracy"))
        if acc is None:
            return None
        ci = self.eval_value(task, set_, "ci95")
        lo, hi = ci if isinstance(ci, list) and len(ci) == 2 else (acc, acc)
        return acc, lo, hi


def _skipped(m: dict[str, Any] | None) -> bool:
    return bool(m and m.get("skipped"))


def _num(x: Any) -> float | None:
    """A finite number, or None (missing, non-numeric or NaN values are gaps, not zeros)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


# ---- formatting -------------------------------------------------------------------------
def _pct(x: Any) -> str:
    v = _num(x)
    return DASH if v is None else f"{100 * v:.1f} %"


def _flt(x: Any, digits: int = 3) -> str:
    v = _num(x)
    return DASH if v is None else f"{v:.{digits}f}"


def _int(x: Any) -> str:
    v = _num(x)
    return DASH if v is None else f"{int(v):d}"


def _set_label(s: str) -> str:
    parsed = parse_set_name(s)
    if parsed.kind == "mix":
        return f"{s} ({100 * parsed.value:g} % flawed)"
    if parsed.kind == "step":  # degrade.step_k: one set per k
        k = parsed.value
        return f"{s} — {SET_DESCRIPTIONS['step']} ({k} step{'s' if k != 1 else ''} per CoT)"
    return s


# ---- tables -----------------------------------------------------------------------------
def _pts(d: dict[str, Any] | None) -> str:
    """A paired difference as ``+3.0 pts [-2.5, +8.5]`` (the interval over the training runs;
    one run: no interval)."""
    if not d:
        return DASH
    if not d.get("ci95"):
        return f"{100 * d['diff']:+.1f} pts (1 run: no interval)"
    lo, hi = d["ci95"]
    return f"{100 * d['diff']:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _ci(m: dict[str, Any] | None) -> str:
    ci = (m or {}).get("ci95")
    if not isinstance(ci, list) or len(ci) != 2:
        return DASH
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _checkpoint_section(metrics_dir: Path, tasks: Sequence[str], sets: Sequence[str],
                        checkpoints: Sequence[int]) -> str:
    """Accuracy [95 % CI] of each intermediate checkpoint (``sft.save_steps``) next to the final
    model; "" without checkpoints. A step the run never reached shows as n/a."""
    if not checkpoints:
        return ""
    steps = sorted(int(n) for n in checkpoints)
    parts = ["## Intermediate checkpoints", "",
             "Accuracy [95 % CI] of the checkpoints saved after the listed optimizer steps (`sft.save_steps`), "
             "greedy, on the same test problems; n/a: the run ended before that step.", ""]

    def cell(path: Path) -> str:
        ev = _read_optional(path)
        return NA if _skipped(ev) else DASH if ev is None else f"{_pct(ev.get('accuracy'))} {_ci(ev)}"

    for t in tasks:
        rows = [[s, *(cell(metrics_dir / "eval" / "checkpoints" / f"{t}-{s}-step-{n}.json") for n in steps),
                 cell(metrics_dir / "eval" / f"{t}-{s}.json")] for s in sets]
        parts += [f"### {t}", "", _table(["set", *(f"step {n}" for n in steps), "final"], rows), ""]
    return "\n".join(parts)


def _accuracy_section(m: _Metrics, tasks: Sequence[str], sets: Sequence[str],
                      comparisons: dict[str, Any] | None = None) -> str:
    parts = [
        "## Accuracy (greedy decoding on the test problems)",
        "",
        "Each set was trained several times (`sft.runs`, SFT seeds base.sft_seed + R) and every run was "
        "evaluated on the same test problems. *accuracy* is the mean over the runs; its 95 % interval "
        "covers another training run on another draw of test problems (random effects over the runs, "
        "Wilson se per run; the untrained base student is one run: Wilson). A Δ is paired: run R of one "
        "set against run R of the other on the same problems; its interval covers another pair of "
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
            label = f"{s} — {SET_DESCRIPTIONS[s]}" if s in SET_DESCRIPTIONS else _set_label(s)
            if m.eval_skipped(t, s):
                rows.append([f"{label} (skipped: empty training set)"] + [NA] * (len(header) - 1))
                continue
            ev = m.eval.get((t, s))
            g = (ev or {}).get
            c = cmp.get(s, {})
            row = [
                label,
                _pct(g("accuracy")),
                _ci(ev),
                _pct(g("accuracy_parsed")) + (" (none parsed)" if g("no_parsed_answers") is True else ""),
                _pct(g("parse_rate")),
                _int(g("runs") or (1 if ev else None)),
                _int(g("n")),
                _pts(c.get("vs_base")),
                _pts(c.get("vs_H")),
            ]
            if has_pass:
                row.insert(4, _pct(g("pass@1")))
            rows.append(row)
        parts += [f"### {t}", "", _table(header, rows), ""]
        parts += _per_run_table(m, t, rows_sets, cmp)
    return "\n".join(parts)


def _per_run_table(m: _Metrics, task: str, sets: Sequence[str], cmp: dict[str, Any]) -> list[str]:
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
            rows.append([s, str(r), _pct(ev.get("accuracy")), _ci(ev), _int(ev.get("n_correct")), delta])
    if not rows:
        return []
    return ["Per training run (each run's own 95 % intervals: Wilson; Δ vs H paired with H's run of the same "
            "index, Newcombe):", "",
            _table(["set", "run", "accuracy", "95 % CI", "correct", "Δ vs H [95 % CI]"], rows), ""]


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
                f"{', '.join(f'{100 * p:g} %' for p in ev['fractions'])}, {runs} run(s) per set, n = {ev['n']}{spread}")
    text = f"{ev['b']} − {ev['a']} = {100 * ev['diff']:+.1f} pts {interval}, {runs} run(s) per arm, n = {ev['n']}{spread}"
    if c["kind"] == "equivalent":
        text += f", margin ±{100 * ev['margin']:g} pts"
    return text


def _claims_section(claims: dict[str, Any]) -> str:
    rows = [[c["id"], c["task"], c["statement"], _VERDICT_MARK.get(c["verdict"], c["verdict"]), _evidence_text(c)]
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
        _table(["claim", "task", "statement", "verdict", "evidence (95 % CI)"], rows, "lllll"),
        "",
    ])


def _variance_section(claims: dict[str, Any] | None) -> str:
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
                rows.append([label, _int(vc["runs"][0]), f"{100 * math.sqrt(vc['within']):.1f}",
                             f"{100 * b['sd']:.1f}", f"{100 * sft['sd']:.1f}", f"{100 * sft['share']:.0f} %"])
        pw = v.get("power")
        if not rows and not pw:
            continue
        parts += [f"### {t}", ""]
        if rows:
            parts += [_table(["number", "runs", "sd over runs (pts)", "test problems: sd (pts)", "SFT seed: sd (pts)",
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
        "`cotshape.core.stats.variance_components`): the SFT seed (the spread of this run's training runs, "
        "which all answered the same test problems) and the test problems (the mean squared Wilson or "
        "Newcombe se of one run: what another draw of test problems would move it). All runs share one "
        "data draw, so the data seed's part is not in these numbers: `cotshape compare` over "
        "`-S base.data_seed=N` experiments, or scripts/variance_breakdown.py against whole-pipeline "
        "seeds, measures it.",
        "",
        *parts,
    ])


def _mixture_section(m: _Metrics, tasks: Sequence[str], curve: Sequence[tuple[float, str]]) -> str:
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
            row += [_pct(m.eval_value(t, name, "accuracy")), _pct(m.eval_value(t, name, "accuracy_parsed"))]
        rows.append(row)
    return "\n".join(
        [
            "## Flawed mixtures (accuracy vs fraction of completely flawed CoTs)",
            "",
            _table(header, rows),
            "",
            "![mixture curve](mixture_curve.png)",
            "",
        ]
    )


def _closeness_section(m: _Metrics, tasks: Sequence[str], trained: Sequence[str]) -> str:
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
                    _set_label(s),
                    _flt(c.get("mean_loss")),
                    _flt(c.get("perplexity"), 2),
                    _flt(sft.get("first_loss")),
                    _int(c.get("n_tokens")),
                    _int(c.get("n_examples")),
                ]
            )
        header = ["set", "mean loss / token", "perplexity", "first SFT loss", "tokens", "examples"]
        parts += [f"### {t}", "", _table(header, rows), ""]
    parts += ["![closeness](closeness.png)", ""]
    return "\n".join(parts)


def _training_section(m: _Metrics, tasks: Sequence[str], trained: Sequence[str]) -> str:
    parts = ["## Fine-tuning runs", ""]
    header = ["set", "examples", "steps", "first loss", "final loss", "train tokens", "tokens/s"]
    for t in tasks:
        rows = []
        for s in trained:
            sft = m.sft.get((t, s)) or {}
            if _skipped(sft):
                rows.append([f"{_set_label(s)} (skipped: empty training set)", "0"] + [NA] * (len(header) - 2))
                continue
            rows.append(
                [
                    _set_label(s),
                    _int(sft.get("examples")),
                    _int(sft.get("steps")),
                    _flt(sft.get("first_loss")),
                    _flt(sft.get("final_loss")),
                    _int(sft.get("train_tokens")),
                    _flt(sft.get("tokens_per_second"), 1),
                ]
            )
        parts += [f"### {t}", "", _table(header, rows), ""]
    parts += ["![loss curves](loss_curves.png)", ""]
    return "\n".join(parts)


def _data_section(m: _Metrics, tasks: Sequence[str]) -> str:
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
    ]
    rows = []
    for t in tasks:
        sel = m.select[t] or {}
        ver = m.verify[t] or {}
        par = m.paraphrase[t] or {}
        rows.append(
            [
                t,
                _int(sel.get("problems")),
                _int(sel.get("with_correct")),
                _int(sel.get("with_wrong")),
                _int(sel.get("with_both")),
                _int(sel.get("selected_G")),
                _int(sel.get("selected_W")),
                _pct(ver.get("teacher_accuracy", ver.get("accuracy"))),
                _pct(par.get("success_rate")),
                _pct(par.get("fallback_share")) if par.get("fallback_share") is not None else NA,
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
            "the share of P that fell back to H.",
            "",
            _table(header, rows),
            "",
            *([*notes, ""] if notes else []),
        ]
    )


def _headlines(m: _Metrics, tasks: Sequence[str], sets: Sequence[str],
               comparisons: dict[str, Any] | None = None) -> list[str]:
    """One line per task: the base student with its interval and the sets that beat it (and H)
    beyond noise; no "best set" is picked out of a tie."""
    lines = []
    for t in tasks:
        base = m.eval.get((t, BASE_SET))
        scored = [s for s in sets if _num(m.eval_value(t, s, "accuracy")) is not None]
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

        base_txt = f"base student {_pct((base or {}).get('accuracy'))} {_ci(base)}" if base else "base student —"
        up, up_h, down_h = beyond("vs_base", 1), beyond("vs_H", 1), beyond("vs_H", -1)
        lines.append(
            f"- **{t}**: {base_txt}; above the base student beyond noise: {', '.join(up) or 'none'}; "
            f"above H: {', '.join(up_h) or 'none'}; below H: {', '.join(down_h) or 'none'} "
            f"(paired 95 % intervals over the training runs; the others are ties)."
        )
    return lines


def _steps_section(tasks: Sequence[str], comparisons: dict[str, Any] | None) -> str:
    """Step-level correctness of the training sets (:mod:`cotshape.data.steps`)."""
    rows = []
    for t in tasks:
        for s, st in ((comparisons or {}).get(t, {}).get("_steps") or {}).items():
            rows.append([t, s, _int(st.get("cots")), _int(st.get("steps")), _int(st.get("correct_steps")),
                         _pct(st.get("step_accuracy")), _flt(st.get("mean_steps_per_cot"), 2)])
    if not rows:
        return ""
    return "\n".join([
        "## Step-level correctness of the training sets",
        "",
        "Every checkable arithmetic step (`a op b = c`) in the chains of thought, recomputed exactly. "
        "W's final answers are wrong by construction; its share of correct steps says how much valid "
        "reasoning it still carries.",
        "",
        _table(["task", "set", "CoTs", "steps", "correct steps", "step accuracy", "steps per CoT"], rows, "llrrrrr"),
        "",
    ])


# ---- plots ------------------------------------------------------------------------------
def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # a bare Figure on the Agg canvas: no pyplot global state, no display needed
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=ax.transAxes, color="0.4")


def _task_colors(tasks: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {t: cmap(i % 10) for i, t in enumerate(tasks)}


#: one colour per named set in every plot, so a set is recognisable across figures
_SET_PALETTE = {
    "base": "#7f7f7f",
    "H": "#1f77b4",
    "G": "#2ca02c",
    "W": "#d62728",
    "P": "#9467bd",
    "step": "#8c564b",
}


def _set_colors(sets: Sequence[str]) -> dict[str, Any]:
    """Fixed colours for the named sets, a sequential map for the mixtures (light = few
    flawed), tab10 for any other set."""
    from matplotlib import colormaps

    mixes = [s for s in sets if parse_set_name(s).kind == "mix"]
    seq, other = colormaps["viridis"], colormaps["tab10"]
    colors: dict[str, Any] = {}
    k = 0
    steps = [s for s in sets if parse_set_name(s).kind == "step"]
    for s in sets:
        if s in _SET_PALETTE:
            colors[s] = _SET_PALETTE[s]
        elif s in steps:
            # browns, darker with more corrupted steps per CoT
            colors[s] = colormaps["copper"](0.75 - 0.5 * steps.index(s) / max(1, len(steps) - 1))
        elif s in mixes:
            # viridis runs dark to light; 0 % flawed gets the light end
            colors[s] = seq(0.9 - 0.75 * mixes.index(s) / max(1, len(mixes) - 1))
        else:
            colors[s] = other((6 + k) % 10)  # tab10 0-5 are the named sets
            k += 1
    return colors


def _pct_ylim(ax, values: Sequence[float]) -> None:
    """Percent axis from 0 with head room, not always 0-100: small accuracies stay readable."""
    top = max(values, default=0.0)
    ax.set_ylim(0, min(100.0, max(10.0, top * 1.2 + 2)))


def _plot_accuracy(m: _Metrics, tasks: Sequence[str], sets: Sequence[str], path: Path) -> None:
    from matplotlib.patches import Patch

    rows_sets = [BASE_SET, *sets]
    colors = _set_colors(rows_sets)
    fig = _new_figure(max(7.0, 1.2 + 1.6 * len(tasks) * 2), 4.2)
    axes = fig.subplots(1, 2, sharey=True)
    width = 0.8 / len(rows_sets)
    any_data = False
    all_ys: list[float] = []
    for ax, key, title in (
        (axes[0], "accuracy", "accuracy = correct / all"),
        (axes[1], "accuracy_parsed", "accuracy (parsed) = correct / parsed"),
    ):
        for j, s in enumerate(rows_sets):
            xs, ys, errs = [], [], []
            for i, t in enumerate(tasks):
                x = i - 0.4 + width * (j + 0.5)
                v = _num(m.eval_value(t, s, key))
                if v is None:
                    # no result: say so, instead of a gap that reads like a 0 % bar
                    ax.text(x, 0, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
                    continue
                xs.append(x)
                ys.append(100 * v)
                runs = [_num(r.get(key)) for r in m.eval_value(t, s, "per_run") or []]
                runs = [100 * u for u in runs if u is not None]
                if len(runs) > 1:  # one dot per training run
                    ax.scatter([x] * len(runs), runs, s=9, color="0.1", zorder=3, linewidths=0)
                    all_ys.extend(runs)
                ci = m.eval_value(t, s, "ci95") if key == "accuracy" else None
                errs.append((100 * v - 100 * ci[0], 100 * ci[1] - 100 * v)
                            if isinstance(ci, list) and len(ci) == 2 else (0.0, 0.0))
            any_data |= bool(ys)
            bars = ax.bar(xs, ys, width=width, color=colors[s], edgecolor="white", linewidth=0.5)
            if key == "accuracy" and ys:  # the 95 % interval of each bar (training runs as the unit)
                ax.errorbar(xs, ys, yerr=[[e[0] for e in errs], [e[1] for e in errs]], fmt="none",
                            ecolor="0.2", elinewidth=0.8, capsize=2)
                all_ys.extend(y + e[1] for y, e in zip(ys, errs, strict=True))
            # value labels: a 0 % bar is otherwise indistinguishable from a missing one
            ax.bar_label(bars, labels=[f"{y:.0f}" for y in ys], fontsize=7, padding=1, color="0.25",
                         label_type="center" if key == "accuracy" else "edge")
            all_ys.extend(ys)
        ax.set_xticks(range(len(tasks)), list(tasks))
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.set_xlabel("task")
    axes[0].set_ylabel("accuracy (%)")
    _pct_ylim(axes[0], all_ys)
    if not any_data:
        _no_data(axes[0], "evaluation results")
    for ax in axes:
        ax.set_xlim(-0.5, len(tasks) - 0.5)
    # explicit handles: a set with no bars at all would otherwise get a default-coloured entry
    handles = [Patch(facecolor=colors[s], label=s) for s in rows_sets]
    axes[1].legend(handles=handles, title="training set", loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    fig.suptitle("Student accuracy per training set: mean over runs, a dot per run, 95 % CI over runs")
    _save_png(fig, path)


def _plot_mixture(m: _Metrics, tasks: Sequence[str], curve: Sequence[tuple[float, str]], path: Path) -> None:
    colors = _task_colors(tasks)
    fig = _new_figure(7.0, 4.5)
    ax = fig.subplots()
    any_data = False
    all_ys: list[float] = []
    markers = "osD^v<>P*X"
    for ti, t in enumerate(tasks):
        # tasks side by side around each fraction (±1.5 points), so no series hides another
        shift = 3.0 * (ti - (len(tasks) - 1) / 2) / max(1, len(tasks) - 1) if len(tasks) > 1 else 0.0
        for key, style, label in (("accuracy", "-", "correct / all"), ("accuracy_parsed", "--", "correct / parsed")):
            style += markers[ti % len(markers)] if key == "accuracy" else "x"
            pts = [(100 * float(p) + shift, _num(m.eval_value(t, name, key)), m.eval_value(t, name, "ci95"))
                   for p, name in curve]
            pts = [(x, 100 * y, ci) for x, y, ci in pts if y is not None]
            if pts:
                any_data = True
                all_ys.extend(y for _, y, _ in pts)
                xs, ys = [x for x, _, _ in pts], [y for _, y, _ in pts]
                ax.plot(xs, ys, style, color=colors[t], label=f"{t}: {label}", markersize=5)
                if key == "accuracy" and all(isinstance(ci, list) and len(ci) == 2 for _, _, ci in pts):
                    # the Wilson 95 % interval of each point (correct / all)
                    lows = [y - 100 * ci[0] for _, y, ci in pts]
                    highs = [100 * ci[1] - y for _, y, ci in pts]
                    ax.errorbar(xs, ys, yerr=[lows, highs], fmt="none", ecolor=colors[t], capsize=3, alpha=0.7)
                    all_ys.extend(100 * c for _, _, ci in pts for c in ci)
        base = _num(m.eval_value(t, BASE_SET, "accuracy"))
        if base is not None:
            all_ys.append(100 * base)
            ax.axhline(100 * base, color=colors[t], linestyle=":", linewidth=1, label=f"{t}: base student")
    if not any_data:
        _no_data(ax, "mixture results")
    ax.set_xlabel("flawed CoTs in the training set (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks([100 * float(p) for p, _ in curve] or [0, 100])
    _pct_ylim(ax, all_ys)
    ax.grid(alpha=0.3)
    ax.set_title("Accuracy vs fraction of flawed chains of thought")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="best")
    _save_png(fig, path)


def _plot_losses(m: _Metrics, tasks: Sequence[str], trained: Sequence[str], path: Path) -> None:
    colors = _set_colors(trained)
    fig = _new_figure(max(6.0, 5.0 * len(tasks)) + 1.5, 4.2)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, t in zip(axes, tasks, strict=True):
        drawn = False
        for s in trained:
            for r, pts in enumerate(m.loss.get((t, s)) or []):  # one line per training run
                if pts:
                    drawn = True
                    steps, losses = zip(*pts, strict=True)
                    ax.plot(steps, losses, color=colors[s], label=s if r == 0 else None, linewidth=1.2,
                            alpha=0.8, marker="." if len(pts) < 30 else None)
        if not drawn:
            _no_data(ax, "loss logs")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # optimizer steps: no 1.5 ticks
        ax.set_title(t)
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss (completion tokens)")
        ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, title="training set", loc="outside right upper", fontsize="small")
    fig.suptitle("SFT loss curves per training set (one line per training run)")
    _save_png(fig, path)


def _plot_closeness(m: _Metrics, tasks: Sequence[str], trained: Sequence[str], path: Path) -> None:
    fig = _new_figure(max(6.0, 5.0 * len(tasks)), 4.2)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    colors = _set_colors(trained)
    for ax, t in zip(axes, tasks, strict=True):
        close = m.closeness[t] or {}
        order = list(trained) + [s for s in close if s not in trained]
        names, values = [], []
        for s in order:
            c = close.get(s)
            v = _num(c.get("mean_loss")) if isinstance(c, dict) else None
            if v is not None:
                names.append(s)
                values.append(v)
        if not names:
            _no_data(ax, "closeness results")
        else:
            bars = ax.bar(
                range(len(names)), values, color=[colors.get(s, "0.5") for s in names], edgecolor="white"
            )
            ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize="small", padding=2)
            ax.set_xticks(range(len(names)), names, rotation=30 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
            ax.margins(y=0.12)
        ax.set_title(t)
        ax.set_xlabel("training set")
        ax.set_ylabel("base student loss per token (lower = closer)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Distributional closeness: the untrained student's loss on each training set")
    _save_png(fig, path)


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _r(x: float | None, digits: int = 4) -> Any:
    return "" if x is None else round(x, digits)


def summary_csvs(m: _Metrics, tasks: Sequence[str], trained: Sequence[str],
                 curve: Sequence[tuple[float, str]]) -> dict[str, str]:
    """The long-format tables behind dvc.yaml's top-level plots (``plots/summary/``), one row per
    task and set, so a plot overlays every set of a task whatever the tasks and fractions:

    * ``loss.csv``: task, set, run, step, loss (every SFT loss curve of every training run);
    * ``accuracy.csv``: task, set, accuracy (%, mean over the runs), lo, hi (95 %, runs as the unit), label; a set without a
      result gets an empty accuracy and the label ``n/a`` (drawn as text, not as a 0 bar);
    * ``closeness.csv``: task, set, loss (the untrained student's loss per token), lo, hi, label;
    * ``mixture.csv``: task, fraction, accuracy, lo, hi (the 0 point is the base set).
    """
    loss_rows, acc_rows, close_rows, mix_rows = [], [], [], []
    for t in tasks:
        for s in trained:
            for r, curve_ in enumerate(m.loss.get((t, s)) or []):
                for step, loss in curve_:
                    loss_rows.append([t, s, r, int(step) if float(step).is_integer() else step, _r(loss)])
        for s in [BASE_SET, *trained]:
            res = m.eval_interval(t, s)
            if res is None:
                acc_rows.append([t, s, "", 0, 0, "n/a"])
            else:
                acc, lo, hi = res
                acc_rows.append([t, s, _r(100 * acc, 2), _r(100 * lo, 2), _r(100 * hi, 2), f"{100 * acc:.1f}"])
        close = m.closeness[t] or {}
        for s in [*trained, *(x for x in close if x not in trained)]:
            c = close.get(s)
            v = _num(c.get("mean_loss")) if isinstance(c, dict) else None
            if v is None:
                if s in ("H", "G", "W", "P"):
                    close_rows.append([t, s, "", 0, 0, "n/a"])
                continue
            lo, hi = c.get("ci95") or (v, v)
            close_rows.append([t, s, _r(v), _r(lo), _r(hi), f"{v:.3f}"])
        for p, name in curve:
            res = m.eval_interval(t, name)
            if res is not None:
                acc, lo, hi = res
                mix_rows.append([t, float(p), _r(acc), _r(lo), _r(hi)])
    return {
        "loss.csv": _csv(["task", "set", "run", "step", "loss"], loss_rows),
        "accuracy.csv": _csv(["task", "set", "accuracy", "lo", "hi", "label"], acc_rows),
        "closeness.csv": _csv(["task", "set", "loss", "lo", "hi", "label"], close_rows),
        "mixture.csv": _csv(["task", "fraction", "accuracy", "lo", "hi"], mix_rows),
    }


# ---- entry point ------------------------------------------------------------------------
def build_report(
    metrics_dir: str | os.PathLike,
    plots_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    tasks: Sequence[str],
    sets: Sequence[str],
    fractions: Sequence[float],
    context: dict[str, Any] | None = None,
    base_set: str = "H",
    claims: dict[str, Any] | None = None,
    comparisons: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    checkpoints: Sequence[int] = (),
) -> Path:
    """Write the report (see the module docstring) and return the path of ``summary.md``.

    ``sets`` are the non-mixture training sets (e.g. ``["H", "G", "W", "P", "step"]``); the
    mixture sets ``mix-{p}`` come from ``fractions`` and the base student is always included.
    ``context`` (e.g. ``{"teacher": ..., "student": ...}``) is listed in the intro, ``notes``
    (what the run is and is not) right after it. ``claims`` (:func:`cotshape.evaluation.claims.judge_run`)
    opens the report; ``comparisons`` adds the paired differences to the accuracy tables.
    ``checkpoints`` (``sft.save_steps``) adds a table of the intermediate checkpoints' accuracy
    (``eval/checkpoints/{task}-{set}-step-{n}.json``).
    """
    if not tasks:
        raise ValueError("tasks is empty: nothing to report")
    for p in fractions:
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"flawed fraction {p!r} is outside [0, 1]")
    metrics_dir, plots_dir, out_dir = Path(metrics_dir), Path(plots_dir), Path(out_dir)
    sets = [s for s in sets if s != BASE_SET]
    # the mixture curve starts at 0 % flawed: the base set itself (trained once)
    curve = [(0.0, base_set)] + [(float(p), set_name(p)) for p in sorted(fractions) if float(p) > 0]
    mixes = [name for p, name in curve if p > 0 and name not in sets]
    trained = [*sets, *mixes]
    m = _Metrics(metrics_dir, plots_dir, tasks, [BASE_SET, *trained])

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
        intro += [_claims_section(claims), _variance_section(claims)]
    intro += ["**Headlines**", "", *_headlines(m, tasks, trained, comparisons), "", "![accuracy](accuracy.png)", ""]

    sections = [
        "\n".join(intro),
        _accuracy_section(m, tasks, trained, comparisons),
        _checkpoint_section(metrics_dir, tasks, sets, checkpoints),
        _mixture_section(m, tasks, curve),
        _closeness_section(m, tasks, trained),
        _training_section(m, tasks, trained),
        _data_section(m, tasks),
        _steps_section(tasks, comparisons),
        HOW_TO_READ,
    ]
    text = "\n".join(x for x in sections if x)  # a section with nothing to show is left out

    # plots and CSVs first, summary last: a summary on disk means the whole report was written
    out_dir.mkdir(parents=True, exist_ok=True)
    _plot_accuracy(m, tasks, sets, out_dir / "accuracy.png")
    _plot_mixture(m, tasks, curve, out_dir / "mixture_curve.png")
    _plot_losses(m, tasks, trained, out_dir / "loss_curves.png")
    _plot_closeness(m, tasks, trained, out_dir / "closeness.png")
    for name, text_ in summary_csvs(m, tasks, trained, curve).items():
        write_text(plots_dir / "summary" / name, text_)
    summary = out_dir / "summary.md"
    write_text(summary, text)
    return summary
