"""The evaluation protocol: score sets of sketches against a real reference set, one table row each.

Protocol (what the papers report: Rec/Ret of RPCL-pix2seq, SP-gra2seq and SketchGloc; FID, IS,
precision/recall and GS of SketchKnitter):
* The **reference** is a real split (by default `test`), per category as many sketches as the
  samples hold of that category (FID and P/R depend on N), in category-major order.
* Every set is scored against the reference, pooled over categories: FID, improved
  precision/recall (k = 3) and Geometry Score on the feature extractor's features; Rec (top-1 and
  top-10 accuracy against each sketch's category) and a sketch IS (10 splits) on the classifier's
  logits; Ret (top-1/10/50) where the generating model's encoder is available.
* Reference rows: the reference set itself (its Rec and IS: what real sketches score) and, when
  another real split is available (`valid` for a `test` reference), that split scored exactly like
  a model's samples: the floor a model can hope to reach at this N.
* Unconditional samples (a multi-category model's free samples carry the categories they were
  drawn from, `category_names`, but no category per sketch) are scored too: Rec(any)@1 is the
  share the judge recognises as any of those categories, with the histogram of the judge's
  top-1 classes; FID, precision/recall and GS compare them with the real reference of those
  categories (an equal share of each).
* A run trained on other categories than the references (or a judge that does not know them)
  is refused unless explicitly allowed, and its row is then marked (`category_mismatch`).
* GS runs on the same features as FID (SketchKnitter's paper does not say which it used; flattened
  fixed-length stroke-3 is likely, which variable-length samples do not have), x1000, with landmark seeds
  `seed + row index`.
With sketchlab's default extractor (the Sketch-a-Net classifier), FID/IS/P-R/GS are not comparable
with numbers computed on ImageNet Inception-v3 features.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sketchlab.data.sources import load_categories
from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError, DataError
from sketchlab.eval import metrics as M
from sketchlab.eval.features import FeatureExtractor
from sketchlab.eval.judge import SketchANetFeatures


@dataclass
class EvalConfig:
    batch_size: int = 256
    rec_topk: tuple[int, ...] = (1, 10)
    ret_topk: tuple[int, ...] = (1, 10, 50)
    is_splits: int = 10
    pr_k: int = 3
    fid_method: str = "sqrtm"
    gs: bool = True
    gs_runs: int = 100
    gs_landmarks: int = 64
    gs_gamma: float | None = None   # None: 1/128 * N/5000 per set (reference code)
    gs_i_max: int = 100
    gs_workers: int | None = None   # None: topology.default_workers; 1: in this process
    gs_scale: float = 1000.0
    seed: int = 0


@dataclass
class RunHooks:
    """How `compare_runs` gets samples and codes out of one trained run.

    `sample(reference)` returns one generated sketch per reference sketch, same order (conditioned
    on it where the model is `conditional`; otherwise as many free samples), ideally carrying
    `z`, the code it was generated from; `encode(sketches)` returns `(N, D)` latent codes (None:
    the model has no encoder, no Ret). `categories`: what the run was trained on (None: not
    checked, for hooks of something else than a sketchlab run). `usable(reference)`: a boolean mask of the references the model can take (None:
    all), `limit`: why it cannot take the others, in words.
    """

    name: str
    sample: Callable[[Sketches], Sketches]
    encode: Callable[[Sketches], np.ndarray] | None = None
    categories: Sequence[str] | None = None
    conditional: bool = True
    usable: Callable[[Sketches], np.ndarray] | None = None
    limit: str = ""


# ------------------------------------------------------------------------------------------------
# Reference data
# ------------------------------------------------------------------------------------------------


def load_split(data_dir: str | Path, categories: Sequence[str], split: str,
               per_category: int | dict[str, int] | None = None) -> Sketches:
    """Real sketches of `split` for `categories` (category-major), raw offsets.

    `per_category` caps each category's count (an int for all, or a count per category name).
    """

    counts = per_category if isinstance(per_category, dict) else {c: per_category for c in categories}
    limit = None if any(v is None for v in counts.values()) else max(counts.values(), default=0)
    loaded = load_categories(data_dir, list(categories), [split], limit)
    sk = loaded[split] if isinstance(loaded, dict) else loaded
    if not isinstance(sk, Sketches):
        sk = Sketches.concat(list(sk))
    if sk.category is None or not sk.category_names:
        raise DataError(f"{data_dir}: split {split!r} came back without category names")
    names = list(sk.category_names)
    parts = []
    for c in categories:
        if c not in names:
            raise DataError(f"{data_dir}: no {split!r} sketches of category {c!r}")
        idx = np.nonzero(sk.category == names.index(c))[0]
        n = counts.get(c)
        parts.append(idx[:n] if n is not None else idx)
    out = sk.select(np.concatenate(parts))
    # Re-express categories in the requested order.
    cat = np.array([list(categories).index(out.category_names[i]) for i in out.category], np.int64)
    return Sketches(out.points, out.offsets, category=cat, category_names=tuple(categories),
                    scale_factor=out.scale_factor)


def is_unconditional(sketches: Sketches) -> bool:
    """Free samples of a multi-category model: the categories they were drawn from
    (`category_names`) but none per sketch."""
    return sketches.category is None and bool(sketches.category_names)


def per_category_counts(sketches: Sketches) -> dict[str, int]:
    """How many sketches of each category: the reference takes as many real ones. Unconditional
    samples ask for an equal share of each category they were drawn from (the first categories
    take one more when the count does not divide)."""
    if is_unconditional(sketches):
        k = len(sketches.category_names)
        q, r = divmod(len(sketches), k)
        counts = {c: q + (1 if i < r else 0) for i, c in enumerate(sketches.category_names)}
        return {c: n for c, n in counts.items() if n > 0}
    if sketches.category is None or not sketches.category_names:
        raise DataError("samples carry no category names: give --categories (the categories of "
                        "the model that drew them) or --run (its run directory); `sketchlab "
                        "sample` writes them")
    counts = np.bincount(sketches.category, minlength=len(sketches.category_names))
    return {name: int(n) for name, n in zip(sketches.category_names, counts) if n > 0}


def category_problem(categories: Sequence[str] | None, reference: Sequence[str],
                     conditional: bool) -> str | None:
    """Why a run trained on `categories` cannot be scored honestly against real sketches of the
    `reference` categories (None: it can). A conditional run must have been trained on every
    reference category; an unconditional one draws its own categories, so they must be exactly
    the reference's."""
    reference = list(reference)
    if not categories:
        return "its run records no categories"
    categories = list(categories)
    if conditional:
        unknown = [c for c in reference if c not in categories]
        if unknown:
            return (f"trained on {_names(categories)}, not on {_names(unknown)} of the "
                    f"references")
    elif set(categories) != set(reference):
        return f"draws {_names(categories)}, the references are {_names(reference)}"
    return None


def check_judge_knows(categories: Sequence[str], judge: Sequence[str], what: str) -> None:
    """A judge scores only the categories it was trained on: refuse the others."""
    blind = [c for c in dict.fromkeys(categories) if c not in judge]
    if blind:
        raise DataError(f"{what}: the classifier does not know {_names(blind)} (it knows "
                        f"{_names(list(judge), 12)}); train a classifier on them (`sketchlab "
                        f"classifier train`) or leave them out (--categories)")


def _names(items: Sequence[str], most: int = 6) -> str:
    items = list(items)
    text = ", ".join(items[:most])
    return text + (f" and {len(items) - most} more" if len(items) > most else "")


# ------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------


@dataclass
class _Extracted:
    name: str
    n: int
    labels: np.ndarray | None          # each sketch's category (judge index); None: unconditional
    logits: np.ndarray
    features: np.ndarray
    drawn_from: list[int] | None = None   # unconditional: the judge indices of its categories


def _extract(name: str, sketches: Sketches, classifier: SketchANetFeatures,
             extractor: FeatureExtractor, progress: bool) -> _Extracted:
    drawn_from = None
    if is_unconditional(sketches):
        labels = None
        judge = list(classifier.categories)
        blind = [c for c in sketches.category_names if c not in judge]
        if blind:
            raise DataError(f"{name}: drawn from {_names(blind)}, which the classifier does not "
                            f"know ({_names(judge)}); train a classifier on them")
        drawn_from = [judge.index(c) for c in sketches.category_names]
    else:
        labels = classifier.labels(sketches, name)
    feats, logits = classifier.extract(sketches, progress=progress, desc=f"{name}: classifier")
    if extractor is not classifier:
        feats, _ = extractor.extract(sketches, progress=progress, desc=f"{name}: {extractor.name}")
    return _Extracted(name, len(sketches), labels, logits, feats.astype(np.float64), drawn_from)


def _rec(e: _Extracted, categories: Sequence[str], ks) -> dict:
    pred = e.logits.argmax(1)
    if e.labels is None:
        # Unconditional samples have no intended category each: "recognised as one of the
        # categories the model draws", and which classes the judge sees how often.
        counts = np.bincount(pred, minlength=len(categories))
        return {"rec_any@1": float(np.mean(np.isin(pred, e.drawn_from))),
                "drawn_from": [categories[c] for c in e.drawn_from],
                "class_histogram": {categories[c]: int(counts[c])
                                    for c in np.argsort(-counts, kind="stable") if counts[c]}}
    out = M.recognition_accuracy(e.logits, e.labels, ks)
    out["rec@1_per_category"] = {
        categories[c]: float(np.mean(pred[e.labels == c] == c)) for c in np.unique(e.labels)}
    return out


def evaluate_sets(samples: dict[str, Sketches], reference: Sketches,
                  classifier: SketchANetFeatures, *, real: Sketches | None = None,
                  extractor: FeatureExtractor | None = None,
                  retrieval: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                  config: EvalConfig | None = None, reference_name: str = "reference",
                  real_name: str = "real", progress: bool = False,
                  marks: dict[str, str] | None = None) -> dict:
    """Score each named sample set (and `real`, if given) against `reference`.

    `retrieval[name] = (gallery_codes, query_codes)` adds Ret for that set; `marks[name]` records
    why that set's categories do not match (`category_mismatch`, marked in the table). Returns
    `{"protocol": ..., "rows": [...], "timings": ...}`; rows are dicts with `set`, `n` and the
    metrics (`rec@k`, or `rec_any@1` and `class_histogram` for unconditional samples, `ret@k`,
    `fid`, `is`, `is_std`, `precision`, `recall`, `gs_x1000`).
    """
    cfg = config or EvalConfig()
    extractor = extractor or classifier
    retrieval = retrieval or {}
    unknown = set(retrieval) - set(samples)
    if unknown:
        raise ConfigError(f"retrieval codes given for unknown sets {sorted(unknown)}")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    sets = {reference_name: reference}
    if real is not None:
        sets[real_name] = real
    for name, sk in samples.items():
        if name in sets:
            raise ConfigError(f"set name {name!r} is used twice")
        if len(sk) == 0:
            raise DataError(f"{name}: no sketches")
        sets[name] = sk
    ex = {name: _extract(name, sk, classifier, extractor, progress) for name, sk in sets.items()}
    timings["render_and_features"] = time.perf_counter() - t

    ref = ex[reference_name]
    rows = []
    t = time.perf_counter()
    ref_stats = M.feature_statistics(ref.features)
    for name, e in ex.items():
        row = {"set": name, "n": e.n}
        row.update(_rec(e, classifier.categories, cfg.rec_topk))
        row["is"], row["is_std"] = M.inception_score(e.logits, cfg.is_splits)
        if name in (marks or {}):
            row["category_mismatch"] = marks[name]
        if name != reference_name:
            row["fid"] = M.frechet_distance(*M.feature_statistics(e.features), *ref_stats,
                                            method=cfg.fid_method)
            row["precision"], row["recall"] = M.precision_recall(
                ref.features, e.features, cfg.pr_k, device=classifier.device)
        if name in retrieval:
            gallery, queries = retrieval[name]
            row.update(M.retrieval_metrics(gallery, queries, cfg.ret_topk,
                                           device=classifier.device))
        rows.append(row)
    timings["rec_is_fid_pr_ret"] = time.perf_counter() - t

    if cfg.gs:
        t = time.perf_counter()
        names = list(ex)
        mrlts = M.rlts([ex[n].features for n in names], n=cfg.gs_runs, landmarks=cfg.gs_landmarks,
                       gamma=cfg.gs_gamma, i_max=cfg.gs_i_max,
                       seeds=[cfg.seed + k for k in range(len(names))], workers=cfg.gs_workers)
        ref_mrlt = mrlts[0].mean(0)
        for row, r in zip(rows, mrlts):
            if row["set"] != reference_name:
                row["gs_x1000"] = M.geometry_score_from_mrlt(r.mean(0), ref_mrlt, cfg.gs_scale)
        timings["geometry_score"] = time.perf_counter() - t

    notes = [f"{e.name}: N={e.n} <= feature dimension {e.features.shape[1]}, so its covariance is "
             f"singular and FID is dominated by estimation error" for e in ex.values()
             if e.n <= e.features.shape[1]]
    protocol = {
        "classifier": str(classifier.run_dir) if classifier.run_dir else None,
        "categories": list(classifier.categories),
        "feature_extractor": extractor.name,
        "note": ("FID/IS/precision/recall/GS use the features named above; with the Sketch-a-Net "
                 "classifier they are not comparable with ImageNet Inception-v3 figures"),
        "reference": reference_name,
        "config": asdict(cfg),
        "warnings": notes,
    }
    return {"protocol": protocol, "rows": rows, "timings": timings}


# ------------------------------------------------------------------------------------------------
# Comparing runs
# ------------------------------------------------------------------------------------------------


def compare_runs(runs: Sequence[str | Path], load_hooks: Callable[[Path], RunHooks],
                 reference: Sketches, classifier: SketchANetFeatures, *,
                 allow_category_mismatch: bool = False, log: Callable[[str], None] | None = None,
                 **kw) -> dict:
    """Sample every run on the same references, then score them all in one table.

    Conditional runs draw one sketch per reference (conditioned on it), unconditional ones as
    many free samples. Every run's categories are checked against the references' and the
    judge's first (`category_problem`): a mismatch is refused, or with `allow_category_mismatch`
    scored and marked. References that some conditional run cannot take (SketchKnitter's are at
    most num_points long) are left out for every run, so that all rows answer the same inputs;
    how many, and whose limit, is reported through `log` and in `protocol["skipped_references"]`.

    Trains nothing. Ret uses, as gallery, the codes the samples were generated from (`z` on the
    samples, else the encoding of the references) and, as queries, the re-encoded samples.
    Keywords go to `evaluate_sets` (`real`, `extractor`, `config`, `progress`, ...).
    """
    ref_cats = [reference.category_names[c] for c in np.unique(reference.category)]
    judge = list(classifier.categories)
    check_judge_knows(ref_cats, judge, "the references")
    loaded, marks, refused = [], {}, []
    for run in runs:
        hooks = load_hooks(Path(run))
        if hooks.categories is None:
            loaded.append(hooks)
            continue
        if not hooks.conditional and hooks.categories:
            check_judge_knows(hooks.categories, judge, f"{hooks.name} (unconditional)")
        problem = category_problem(hooks.categories, ref_cats, hooks.conditional)
        if problem:
            if allow_category_mismatch:
                marks[hooks.name] = problem
                if log:
                    log(f"warning: {hooks.name}: {problem}; scored anyway and marked in the table")
            else:
                refused.append(f"{hooks.name}: {problem}")
        loaded.append(hooks)
    if refused:
        raise ConfigError("categories do not match, so the scores would not mean what they "
                          "seem: " + "; ".join(refused) + ". Compare runs on their own "
                          "categories (--categories, with a judge and data of them), or pass "
                          "--allow-category-mismatch to score anyway (the rows are marked)")

    keep = np.ones(len(reference), bool)
    skipped: dict[str, dict] = {}
    for hooks in loaded:
        if hooks.conditional and hooks.usable is not None:
            ok = np.asarray(hooks.usable(reference), bool)
            if not ok.all():
                skipped[hooks.name] = {"references": int((~ok).sum()), "why": hooks.limit}
            keep &= ok
    if not keep.all():
        if not keep.any():
            raise DataError(f"no reference sketch is usable by every run ({_skips(skipped)})")
        if log:
            log(f"note: {int((~keep).sum())} of {len(reference)} references left out for every "
                f"run: {_skips(skipped)}")
        reference = reference.select(np.nonzero(keep)[0])
        kw = _trim_real(kw, reference)

    samples, retrieval = {}, {}
    for hooks in loaded:
        generated = hooks.sample(reference)
        if len(generated) != len(reference):
            raise DataError(f"{hooks.name}: sampled {len(generated)} sketches for "
                            f"{len(reference)} references (need one per reference, same order)")
        if hooks.conditional and generated.category is None:
            generated.category = reference.category.copy()
            generated.category_names = reference.category_names
        elif not hooks.conditional and generated.category is None and not generated.category_names:
            generated.category_names = tuple(hooks.categories or ())
        if hooks.encode is not None and hooks.conditional:
            gallery = generated.z if generated.z is not None else hooks.encode(reference)
            retrieval[hooks.name] = (np.asarray(gallery), np.asarray(hooks.encode(generated)))
        samples[hooks.name] = generated
    result = evaluate_sets(samples, reference, classifier, retrieval=retrieval, marks=marks, **kw)
    result["protocol"]["skipped_references"] = skipped
    result["protocol"]["references_used"] = len(reference)
    return result


def _skips(skipped: dict[str, dict]) -> str:
    return "; ".join(f"{name} cannot take {s['references']}: {s['why']}"
                     for name, s in skipped.items())


def _trim_real(kw: dict, reference: Sketches) -> dict:
    """The real row is as large as the reference, per category: trim it after references were
    left out."""
    real = kw.get("real")
    if real is None:
        return kw
    want = per_category_counts(reference)
    names = list(real.category_names)
    idx = []
    for c, n in want.items():
        if c in names:
            idx.extend(np.nonzero(real.category == names.index(c))[0][:n].tolist())
    return dict(kw, real=real.select(np.array(sorted(idx), np.int64)))


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------

_COLUMNS = [("n", "N", "{:d}"), ("rec@1", "Rec@1", "{:.3f}"), ("rec@10", "Rec@10", "{:.3f}"),
            ("rec_any@1", "Rec(any)@1", "{:.3f}"),
            ("ret@1", "Ret@1", "{:.3f}"), ("ret@10", "Ret@10", "{:.3f}"),
            ("ret@50", "Ret@50", "{:.3f}"), ("fid", "FID", "{:.2f}"), ("is", "IS", "{:.2f}"),
            ("precision", "Prec", "{:.3f}"), ("recall", "Recall", "{:.3f}"),
            ("gs_x1000", "GS x1e3", "{:.2f}")]


def _cell(value, fmt: str) -> str:
    text = fmt.format(value)
    # A value that rounds to zero prints as 0 (an FID of -1e-9 is float rounding, not "-0.00").
    if text.startswith("-") and float(text) == 0:
        text = text[1:]
    return text


def markdown_table(result: dict) -> str:
    """The rows as a markdown table (columns that no row has are left out). Rows of runs whose
    categories do not match are marked `*` and explained under the table, as are unconditional
    rows' Rec(any) and class histograms."""
    rows = result["rows"]
    cols = [c for c in _COLUMNS if any(c[0] in r for r in rows)]
    lines = ["| set | " + " | ".join(c[1] for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for r in rows:
        cells = [_cell(r[key], fmt) if key in r else "-" for key, _, fmt in cols]
        mark = " *" if r.get("category_mismatch") else ""
        lines.append(f"| {r['set']}{mark} | " + " | ".join(cells) + " |")
    notes = [f"\\* {r['set']}: categories do not match ({r['category_mismatch']}); scored "
             f"anyway (--allow-category-mismatch)." for r in rows if r.get("category_mismatch")]
    for r in rows:
        if "class_histogram" in r:
            shown = list(r["class_histogram"].items())
            hist = ", ".join(f"{c} {n}" for c, n in shown[:8])
            if len(shown) > 8:
                hist += f", {len(shown) - 8} more classes {sum(n for _, n in shown[8:])}"
            notes.append(f"{r['set']}: unconditional samples; Rec(any)@1 = share recognised as "
                         f"any of {_names(r.get('drawn_from', []))}. Judge's top-1 classes: "
                         f"{hist}.")
    proto = result.get("protocol", {})
    if notes or proto.get("feature_extractor"):
        lines.append("")
    lines += notes
    if proto.get("feature_extractor"):
        lines.append(f"Features: {proto['feature_extractor']}; FID, Prec/Recall and GS against "
                     f"`{proto.get('reference')}`. {proto.get('note', '')}.")
    if proto.get("skipped_references"):
        lines.append(f"References: {proto.get('references_used')} used; left out for every "
                     f"run: {_skips(proto['skipped_references'])}.")
    for w in proto.get("warnings", []):
        lines.append(f"Warning: {w}.")
    return "\n".join(lines) + "\n"
