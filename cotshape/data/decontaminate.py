"""Decontamination: which training problems copy (or nearly copy) a test problem.

Three methods, each run independently on the *normalised* question (:func:`normalize`: lower-case,
every character that is not a letter or digit becomes a space, words split on whitespace):

``exact``
    equal normalised text (so "What is 2+2?" and "what is 2 + 2" are equal).
``ngram``
    the two questions share a word n-gram (default n = 8), the check of open-r1's
    ``scripts/decontaminate.py`` (huggingface/open-r1: 8-grams of the problem against AIME, MATH-500,
    GPQA and LiveCodeBench). The test side's n-grams are indexed once (n-gram -> test ids), and each
    training question looks up its own n-grams, so the cost is linear in the text, not all pairs.
    A question shorter than n words has one n-gram, its whole word sequence (open-r1 gives it
    none, so it could never be flagged): two short questions overlap only when their words are
    equal, and a short test question inside a longer training question is left to ``fuzzy`` (or a
    smaller ``ngram``).
``fuzzy``
    near-duplicates: ``rapidfuzz.fuzz.ratio(train, test) >= threshold`` (default 95) on the
    normalised questions, the check of open-thoughts' ``open_thoughts/decontaminate.py``
    (fuzzy matching with ``fuzz.ratio`` and threshold 95). Not all pairs are scored: since
    ``ratio = 100 * (1 - indel / (len_a + len_b))`` and every insertion or deletion changes one
    character count by one, the L1 distance of two strings' character counts bounds ``indel``
    from below; numpy computes it for blocks of length-sorted training questions (against the
    test questions whose length can reach the threshold) and ``fuzz.ratio`` scores only the pairs
    it leaves, ``rapidfuzz.process.cdist`` a block where it leaves many. The pairs found are
    exactly those of a loop over all pairs (:func:`fuzzy_matches`).

One difference from open-r1's normalisation (lower-case, collapse whitespace): punctuation
becomes a space as well, so "5." and "5" or "$x$" and "x" are the same word. The methods are
independent: an exact copy of an 8-word question is also an n-gram and a fuzzy match, and is
listed once for each; a question with no words at all (empty, only punctuation) is compared by none.

:func:`decontaminate` takes records (dicts) and returns::

    {"flagged": N,                      # distinct training ids flagged by any method
     "by_method": {"ngram": n1, "fuzzy": n2, "exact": n3},   # distinct training ids per method
     "pairs": [[train_id, test_id, method], ...]}

the pairs in input order (first occurrence of the training id, then of the test id, then
exact, ngram, fuzzy). :func:`read_records` reads a JSONL file for it, every problem a
:class:`~cotshape.core.errors.RecordError` naming the file and line. ``cotshape decontaminate``
is the command (cotshape/cli.py).
"""

from __future__ import annotations

import bisect
import math
import os
import re
from collections import defaultdict
from typing import Any

from cotshape.core.errors import InputError, RecordError

#: the methods, in the order of a pair list
METHODS = ("exact", "ngram", "fuzzy")
#: defaults (open-r1: 8-grams; open-thoughts: fuzz.ratio >= 95)
DEFAULT_NGRAM = 8
DEFAULT_FUZZY_THRESHOLD = 95.0
#: training questions per block of :func:`fuzzy_matches` (a block x its test window of int32 distances)
_BLOCK = 64
#: a block whose character-count filter leaves more than this share of its pairs is scored whole by cdist
DENSE_SHARE = 0.05
#: the characters :func:`fuzzy_matches` counts one by one (all others share one count)
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 "

_NON_ALNUM = re.compile(r"[\W_]+")


def normalize(text: str) -> list[str]:
    """The words of ``text``: lower-cased, every non-alphanumeric character a space, split."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


def word_ngrams(words: list[str], n: int = DEFAULT_NGRAM) -> set[tuple[str, ...]]:
    """The distinct word n-grams of ``words``; fewer than n words: the whole sequence (none if empty)."""
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def build_ngram_index(tests: list[list[str]], n: int = DEFAULT_NGRAM) -> dict[tuple[str, ...], list[int]]:
    """n-gram -> indices (into ``tests``, ascending) of the test questions that hold it."""
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for j, words in enumerate(tests):
        for g in word_ngrams(words, n):
            index[g].append(j)
    return dict(index)


def ngram_matches(train: list[list[str]], tests: list[list[str]], n: int = DEFAULT_NGRAM) -> set[tuple[int, int]]:
    """(train index, test index) of every pair that shares a word n-gram."""
    rows, cols = _ngram_pairs(train, tests, n)
    return set(zip(rows, cols, strict=True))


def _ngram_pairs(train: list[list[str]], tests: list[list[str]], n: int) -> tuple[list[int], list[int]]:
    """:func:`ngram_matches` as two lists (train indices, test indices), each pair once."""
    index = build_ngram_index(tests, n)
    rows: list[int] = []
    cols: list[int] = []
    for i, words in enumerate(train):
        hits = [index[g] for g in word_ngrams(words, n) if g in index]
        if hits:
            js = set().union(*hits)
            rows.extend([i] * len(js))
            cols.extend(js)
    return rows, cols


def exact_matches(train: list[str], tests: list[str]) -> set[tuple[int, int]]:
    """(train index, test index) of every pair with equal (non-empty) normalised text."""
    by_text: dict[str, list[int]] = defaultdict(list)
    for j, t in enumerate(tests):
        if t:
            by_text[t].append(j)
    return {(i, j) for i, t in enumerate(train) if t for j in by_text.get(t, ())}


def _char_counts(strings: list[str]):
    """(len(strings), 38) int32: each string's counts of a-z, 0-9 and space, and of all other
    characters together (the last column)."""
    import numpy as np

    lut = np.full(128, len(_ALPHABET), dtype=np.intp)
    lut[[ord(c) for c in _ALPHABET]] = np.arange(len(_ALPHABET))
    counts = np.zeros((len(strings), len(_ALPHABET) + 1), dtype=np.int32)
    for k, s in enumerate(strings):
        codes = np.frombuffer(s.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        bins = np.where(codes < 128, lut[np.minimum(codes, 127)], len(_ALPHABET))
        counts[k] = np.bincount(bins, minlength=len(_ALPHABET) + 1)
    return counts


def fuzzy_matches(train: list[str], tests: list[str], threshold: float = DEFAULT_FUZZY_THRESHOLD,
                  workers: int = -1) -> set[tuple[int, int]]:
    """(train index, test index) of every pair with ``fuzz.ratio >= threshold`` (empty strings never
    match): exactly the pairs of a loop over all pairs, without computing most of them.

    ``fuzz.ratio`` is ``100 * (1 - indel / (len_a + len_b))`` (indel: the insertions and deletions
    that turn one string into the other), so a pair can reach the threshold only if
    ``indel <= (1 - threshold / 100) * (len_a + len_b)``. Each insertion or deletion changes one
    character count by one, so the L1 distance of the two strings' character counts (a-z, 0-9,
    space, the rest together) is a lower bound of ``indel``: numpy computes it for blocks of
    length-sorted training strings against the test strings whose length can reach the threshold,
    and ``fuzz.ratio`` decides the few pairs it leaves. A block where it leaves many (similar
    texts, a low threshold) is scored whole by ``rapidfuzz.process.cdist``. Blocks run on
    ``workers`` threads (-1: one per core)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from rapidfuzz import fuzz, process

    tr = sorted((len(s), i) for i, s in enumerate(train) if s)
    te = sorted((len(s), j) for j, s in enumerate(tests) if s)
    if not tr or not te:
        return set()
    t = float(threshold)
    te_len = [n for n, _ in te]
    te_idx = np.array([j for _, j in te], dtype=np.intp)
    te_counts = np.ascontiguousarray(_char_counts([tests[j] for j in te_idx.tolist()]).T)  # (bins, n_test)
    te_len_arr = np.array(te_len, dtype=np.float64)
    # ratio <= 200*min/(a+b): with b >= a, b <= a*(200-t)/t; with b <= a, b >= a*t/(200-t)
    lo_f = t / (200.0 - t)
    hi_f = (200.0 - t) / t if t > 0 else math.inf

    def block_pairs(start: int) -> list[tuple[int, int]]:
        block = tr[start : start + _BLOCK]
        lo = math.floor(block[0][0] * lo_f) - 1  # one character of slack: only a prefilter
        a = bisect.bisect_left(te_len, lo)
        b = len(te_len) if math.isinf(hi_f) else bisect.bisect_right(te_len, math.ceil(block[-1][0] * hi_f) + 1)
        if a >= b:
            return []
        rows = [i for _, i in block]
        cols = te_idx[a:b]
        counts = _char_counts([train[i] for i in rows])
        dist = np.zeros((len(rows), b - a), dtype=np.int32)
        tmp = np.empty_like(dist)
        for d in range(counts.shape[1]):
            np.subtract(counts[:, d, None], te_counts[None, d, a:b], out=tmp)
            np.abs(tmp, out=tmp)
            dist += tmp
        row_len = np.array([n for n, _ in block], dtype=np.float64)
        bound = (100.0 - t) / 100.0 * (row_len[:, None] + te_len_arr[None, a:b]) + 1e-6
        r, c = np.nonzero(dist <= bound)
        if len(r) > DENSE_SHARE * dist.size:
            scores = process.cdist([train[i] for i in rows], [tests[j] for j in cols.tolist()], scorer=fuzz.ratio,
                                   score_cutoff=t, dtype=np.float32, workers=1)
            r, c = np.nonzero(scores >= t)
            return [(rows[x], int(cols[y])) for x, y in zip(r.tolist(), c.tolist(), strict=True)]
        out = []
        for x, y in zip(r.tolist(), c.tolist(), strict=True):
            i, j = rows[x], int(cols[y])
            if fuzz.ratio(train[i], tests[j], score_cutoff=t) >= t:
                out.append((i, j))
        return out

    n_threads = (os.cpu_count() or 1) if workers == -1 else max(1, workers)
    starts = range(0, len(tr), _BLOCK)
    if n_threads == 1:
        found = map(block_pairs, starts)
    else:
        with ThreadPoolExecutor(n_threads) as pool:
            found = list(pool.map(block_pairs, starts))
    return {p for pairs in found for p in pairs}


def _check_options(ngram: int, fuzzy_threshold: float) -> None:
    if isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 1:
        raise InputError(f"ngram: must be an integer >= 1, got {ngram!r}")
    if not isinstance(fuzzy_threshold, (int, float)) or not 0 <= fuzzy_threshold <= 100:
        raise InputError(f"fuzzy_threshold: must be a number in [0, 100], got {fuzzy_threshold!r}")


def _check_record(rec: Any, field: str, id_field: str, where: str) -> None:
    """One RecordError for a record :func:`decontaminate` cannot use; ``where`` starts the message."""
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for name in (id_field, field):
        if name not in rec:
            have = ", ".join(sorted(map(str, rec))) or "none"
            raise RecordError(f"{where}: missing field '{name}' (fields: {have})")
    rid = rec[id_field]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise RecordError(f"{where}: field '{id_field}' must be a string or an integer, "
                          f"got {type(rid).__name__}")
    if not isinstance(rec[field], str):
        raise RecordError(f"{where}: field '{field}' must be a string, got {type(rec[field]).__name__}")


def read_records(path: str | os.PathLike, field: str = "question", id_field: str = "id") -> list[dict[str, Any]]:
    """The records of a JSONL file, each checked for :func:`decontaminate`: a missing file, a line
    that is not JSON, a record that is not an object, a missing or mistyped field or id is one
    :class:`RecordError` ``path:line: ...``."""
    from cotshape.core.records import iter_jsonl

    out = []
    for lineno, rec in iter_jsonl(path):
        _check_record(rec, field, id_field, f"{path}:{lineno}")
        out.append(rec)
    return out


def decontaminate(train: list[dict], test: list[dict], field: str = "question", ngram: int = DEFAULT_NGRAM,
                  fuzzy_threshold: float = DEFAULT_FUZZY_THRESHOLD, id_field: str = "id", *,
                  workers: int = -1) -> dict[str, Any]:
    """Flag the training records whose ``field`` copies a test record's: exact, n-gram and fuzzy
    matches (module docstring). ``workers``: threads of the fuzzy search (-1: one per core)."""
    _check_options(ngram, fuzzy_threshold)
    for side, recs in (("train", train), ("test", test)):
        for k, rec in enumerate(recs):
            _check_record(rec, field, id_field, f"{side} record {k}")
    train_words = [normalize(r[field]) for r in train]
    test_words = [normalize(r[field]) for r in test]
    train_text = [" ".join(w) for w in train_words]
    test_text = [" ".join(w) for w in test_words]

    found = {
        "exact": exact_matches(train_text, test_text),
        "ngram": _ngram_pairs(train_words, test_words, ngram),
        "fuzzy": fuzzy_matches(train_text, test_text, fuzzy_threshold, workers=workers),
    }
    train_ids = [r[id_field] for r in train]
    test_ids = [r[id_field] for r in test]
    return summarize(found, train_ids, test_ids)


def summarize(found: dict[str, Any], train_ids: list, test_ids: list) -> dict[str, Any]:
    """The result document from the pairs of each method (train index, test index), given as a set
    of pairs or as two lists (train indices, test indices): pairs by id (a repeated id counts
    once, at its first position), in input order."""
    import gc

    import numpy as np

    first_train = {rid: k for k, rid in reversed(list(enumerate(train_ids)))}
    first_test = {rid: k for k, rid in reversed(list(enumerate(test_ids)))}
    tr_pos = np.array([first_train[rid] for rid in train_ids], dtype=np.int64)
    te_pos = np.array([first_test[rid] for rid in test_ids], dtype=np.int64)
    n_te, n_m = max(1, len(test_ids)), len(METHODS)
    keys = [np.zeros(0, dtype=np.int64)]
    for m, method in enumerate(METHODS):
        pairs = found.get(method, ())
        rows, cols = pairs if isinstance(pairs, tuple) else (zip(*pairs, strict=True) if pairs else ((), ()))
        rows = np.asarray(list(rows), dtype=np.int64)
        cols = np.asarray(list(cols), dtype=np.int64)
        keys.append((tr_pos[rows] * n_te + te_pos[cols]) * n_m + m)
    key = np.sort(np.concatenate(keys))  # train position, then test position, then method
    key = key[np.concatenate(([True], key[1:] != key[:-1]))] if len(key) else key
    a, rest = np.divmod(key, n_te * n_m)
    b, m = np.divmod(rest, n_m)

    def distinct(sorted_values) -> int:
        return int(len(sorted_values) and 1 + np.count_nonzero(sorted_values[1:] != sorted_values[:-1]))

    by_method = {method: distinct(a[m == k]) for k, method in enumerate(METHODS)}
    gc_was_on = gc.isenabled()
    gc.disable()  # a boilerplate n-gram can make millions of pairs: small lists, no cycles to collect
    try:
        pairs = [[train_ids[x], test_ids[y], METHODS[z]]
                 for x, y, z in zip(a.tolist(), b.tolist(), m.tolist(), strict=True)]
    finally:
        if gc_was_on:
            gc.enable()
    return {
        "flagged": distinct(a),
        "by_method": {method: by_method[method] for method in ("ngram", "fuzzy", "exact")},
        "pairs": pairs,
    }


def decontaminate_files(train_path: str | os.PathLike, test_path: str | os.PathLike, field: str = "question",
                        ngram: int = DEFAULT_NGRAM, fuzzy_threshold: float = DEFAULT_FUZZY_THRESHOLD,
                        id_field: str = "id", *, workers: int = -1) -> dict[str, Any]:
    """:func:`decontaminate` on two JSONL files (read with :func:`read_records`)."""
    _check_options(ngram, fuzzy_threshold)
    train = read_records(train_path, field, id_field)
    test = read_records(test_path, field, id_field)
    return decontaminate(train, test, field, ngram, fuzzy_threshold, id_field, workers=workers)


#: the checks of the decontaminate@T stage (:func:`check_sets`), in report order
SET_METHODS = ("question_exact", "question_ngram", "question_fuzzy", "completion_ngram", "completion_exact",
               "structure")
#: stage actions: ``report`` only counts; ``drop`` removes every flagged problem from every set
ACTIONS = ("report", "drop")


#: a word n-gram held by more than this share of the test items (questions and solutions) is
#: boilerplate, not a copy ("The answer is ...", "This uses every number once and gives ..."):
#: the completion check ignores it (at least one item may always hold it)
COMMON_SHARE = 0.01


def distinctive_index(items: list[list[str]], n: int, share: float = COMMON_SHARE) -> dict[tuple[str, ...], list[int]]:
    """:func:`build_ngram_index` of ``items`` without the n-grams that more than ``share`` of them
    hold (at least one item may hold an n-gram; the index lists each item once per n-gram)."""
    limit = max(1, math.floor(share * len(items)))
    return {g: js for g, js in build_ngram_index(items, n).items() if len(js) <= limit}


def check_sets(problems: list[dict], sets: dict[str, list[dict]], tests: list[dict], *,
               structure_key=None, text: bool = True, ngram: int = DEFAULT_NGRAM,
               fuzzy_threshold: float = DEFAULT_FUZZY_THRESHOLD, examples: int = 5,
               workers: int = -1) -> dict[str, Any]:
    """What the decontaminate@T stage checks: for every training set (name -> training records
    with ``problem_id`` and ``completion``) against the task's test problems.

    - ``question_exact`` / ``question_ngram`` / ``question_fuzzy``: the set's problem (its
      ``question`` in ``problems``) against every test question, by the three methods of
      :func:`decontaminate` (so every set trained on the same problems gets the same counts);
    - ``completion_ngram``: the set's completion shares a *distinctive* word n-gram with a test
      question or solution (one held by at most :data:`COMMON_SHARE` of them: a CoT that writes
      out a test problem or its worked solution, not the task's boilerplate);
    - ``completion_exact``: the completion equals a test solution (normalised);
    - ``structure``: ``structure_key(problem)`` equals a test problem's (Countdown: the same numbers
      and target; MBPP: the same tests); not run when ``structure_key`` is None.

    ``text``: false runs none of the text checks (question and completion), only ``structure``: a
    task whose problem and derivation are generated from its structure (Countdown,
    :attr:`cotshape.tasks.base.Task.decontaminate_text`).

    Returns ``{"checks": [the checks run], "sets": {name: {"records", "flagged", "share",
    "by_method", "examples"}}, "flagged_problems": [ids flagged by any check in any set, sorted]}``;
    a record is flagged when any check flags it; ``examples``: the first few ``{problem_id,
    test_id, method}``."""
    _check_options(ngram, fuzzy_threshold)
    by_id = {p["id"]: p for p in problems}
    test_ids = [t["id"] for t in tests]
    test_q = [normalize(t["question"]) for t in tests]
    test_s = [normalize(t.get("solution") or "") for t in tests]
    checks = [m for m in SET_METHODS if (m == "structure" and structure_key is not None) or (m != "structure" and text)]
    # the questions of every problem any set uses, checked once
    used = sorted({r["problem_id"] for recs in sets.values() for r in recs if r["problem_id"] in by_id})
    question_hits: dict[str, list[tuple[str, str]]] = defaultdict(list)  # problem id -> [(method, test id)]
    if text:
        q_words = [normalize(by_id[i]["question"]) for i in used]
        q_text = [" ".join(w) for w in q_words]
        t_text = [" ".join(w) for w in test_q]
        for method, pairs in (("question_exact", exact_matches(q_text, t_text)),
                              ("question_ngram", ngram_matches(q_words, test_q, ngram)),
                              ("question_fuzzy", fuzzy_matches(q_text, t_text, fuzzy_threshold, workers=workers))):
            for i, j in sorted(pairs):
                question_hits[used[i]].append((method, test_ids[j]))
    structure: dict[str, list[str]] = defaultdict(list)
    if structure_key is not None:
        test_keys: dict[Any, list[str]] = defaultdict(list)
        for t in tests:
            key = structure_key(t)
            if key is not None:
                test_keys[key].append(t["id"])
        for pid in used:
            key = structure_key(by_id[pid])
            if key is not None:
                structure[pid] = test_keys.get(key, [])
    n_test = len(tests)
    index = distinctive_index(test_q + test_s, ngram)  # item j: question j, then solution j - n_test
    test_solution_text = [" ".join(w) for w in test_s]
    out_sets: dict[str, Any] = {}
    flagged_problems: set[str] = set()
    for name, recs in sets.items():
        c_words = [normalize(r.get("completion") or "") for r in recs]
        c_hits: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for i, words in enumerate(c_words if text else ()):
            found = sorted({j % n_test for g in word_ngrams(words, ngram) for j in index.get(g, ())})
            c_hits[i] += [("completion_ngram", test_ids[j]) for j in found]
        for i, j in sorted(exact_matches([" ".join(w) for w in c_words], test_solution_text) if text else ()):
            c_hits[i].append(("completion_exact", test_ids[j]))
        by_method = dict.fromkeys(checks, 0)
        flagged = 0
        shown: list[dict[str, str]] = []
        for k, rec in enumerate(recs):
            pid = rec["problem_id"]
            hits = list(question_hits.get(pid, ())) + c_hits.get(k, [])
            hits += [("structure", tid) for tid in structure.get(pid, ())]
            methods = {m for m, _ in hits}
            for m in methods:
                by_method[m] += 1
            if hits:
                flagged += 1
                flagged_problems.add(pid)
                seen_methods: set[str] = set()
                for m, tid in hits:  # one example per method per record, in check order
                    if len(shown) < examples and m not in seen_methods:
                        shown.append({"problem_id": pid, "test_id": tid, "method": m})
                        seen_methods.add(m)
        out_sets[name] = {"records": len(recs), "flagged": flagged,
                          "share": flagged / len(recs) if recs else 0.0,
                          "by_method": by_method, "examples": shown}
    return {"checks": checks, "sets": out_sets, "flagged_problems": sorted(flagged_problems)}
