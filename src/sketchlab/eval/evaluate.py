"""The evaluation protocol: score sets of sketches against a real reference set, one table row each.

Protocol (sketchknitter-and-metrics.md 10, A10; rpcl-pix2seq.md 8; sp-gra2seq-sketchgloc.md 0.10-0.11):
* The **reference** is a real split (by default `test`), per category as many sketches as the
  samples hold of that category (FID and P/R depend on N), in category-major order.
* Every set is scored against the reference, pooled over categories: FID, improved
  precision/recall (k = 3) and Geometry Score on the feature extractor's features; Rec (top-1 and
  top-10 accuracy against each sketch's category) and a sketch IS (10 splits) on the classifier's
  logits; Ret (top-1/10/50) where the generating model's encoder is available.
* Reference rows: the reference set itself (its Rec and IS: what real sketches score) and, when
  another real split is available (`valid` for a `test` reference), that split scored exactly like
  a model's samples: the floor a model can hope to reach at this N.
* GS runs on the same features as FID (spec A9: SketchKnitter probably used flattened fixed-length
  stroke-3, which variable-length samples do not have), x1000, with landmark seeds
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
    on it where the model is conditional), ideally carrying `z`, the code it was generated from;
    `encode(sketches)` returns `(N, D)` latent codes (None: the model has no encoder, no Ret).
    """

    name: str
    sample: Callable[[Sketches], Sketches]
    encode: Callable[[Sketches], np.ndarray] | None = None


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


def per_category_counts(sketches: Sketches) -> dict[str, int]:
    if sketches.category is None or not sketches.category_names:
        raise DataError("samples carry no category names; save them with `category` and "
                        "`category_names` (sketchlab sample does)")
    counts = np.bincount(sketches.category, minlength=len(sketches.category_names))
    return {name: int(n) for name, n in zip(sketches.category_names, counts) if n > 0}


# ------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------


@dataclass
class _Extracted:
    name: str
    n: int
    labels: np.ndarray
    logits: np.ndarray
    features: np.ndarray


def _extract(name: str, sketches: Sketches, classifier: SketchANetFeatures,
             extractor: FeatureExtractor, progress: bool) -> _Extracted:
    labels = classifier.labels(sketches, name)
    feats, logits = classifier.extract(sketches, progress=progress, desc=f"{name}: classifier")
    if extractor is not classifier:
        feats, _ = extractor.extract(sketches, progress=progress, desc=f"{name}: {extractor.name}")
    return _Extracted(name, len(sketches), labels, logits, feats.astype(np.float64))


def _rec(e: _Extracted, categories: Sequence[str], ks) -> dict:
    out = M.recognition_accuracy(e.logits, e.labels, ks)
    pred = e.logits.argmax(1)
    out["rec@1_per_category"] = {
        categories[c]: float(np.mean(pred[e.labels == c] == c)) for c in np.unique(e.labels)}
    return out


def evaluate_sets(samples: dict[str, Sketches], reference: Sketches,
                  classifier: SketchANetFeatures, *, real: Sketches | None = None,
                  extractor: FeatureExtractor | None = None,
                  retrieval: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                  config: EvalConfig | None = None, reference_name: str = "reference",
                  real_name: str = "real", progress: bool = False) -> dict:
    """Score each named sample set (and `real`, if given) against `reference`.

    `retrieval[name] = (gallery_codes, query_codes)` adds Ret for that set. Returns
    `{"protocol": ..., "rows": [...], "timings": ...}`; rows are dicts with `set`, `n` and the
    metrics (`rec@k`, `ret@k`, `fid`, `is`, `is_std`, `precision`, `recall`, `gs_x1000`).
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
                 reference: Sketches, classifier: SketchANetFeatures, **kw) -> dict:
    """Sample every run conditioned on the same references, then score them all in one table.

    Trains nothing. Ret uses, as gallery, the codes the samples were generated from (`z` on the
    samples, else the encoding of the references) and, as queries, the re-encoded samples.
    Keywords go to `evaluate_sets` (`real`, `extractor`, `config`, `progress`, ...).
    """
    samples, retrieval = {}, {}
    for run in runs:
        hooks = load_hooks(Path(run))
        generated = hooks.sample(reference)
        if len(generated) != len(reference):
            raise DataError(f"{run}: sampled {len(generated)} sketches for {len(reference)} "
                            f"references (need one per reference, same order)")
        if generated.category is None:
            generated.category = reference.category.copy()
            generated.category_names = reference.category_names
        if hooks.encode is not None:
            gallery = generated.z if generated.z is not None else hooks.encode(reference)
            retrieval[hooks.name] = (np.asarray(gallery), np.asarray(hooks.encode(generated)))
        samples[hooks.name] = generated
    return evaluate_sets(samples, reference, classifier, retrieval=retrieval, **kw)


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------

_COLUMNS = [("n", "N", "{:d}"), ("rec@1", "Rec@1", "{:.3f}"), ("rec@10", "Rec@10", "{:.3f}"),
            ("ret@1", "Ret@1", "{:.3f}"), ("ret@10", "Ret@10", "{:.3f}"),
            ("ret@50", "Ret@50", "{:.3f}"), ("fid", "FID", "{:.2f}"), ("is", "IS", "{:.2f}"),
            ("precision", "Prec", "{:.3f}"), ("recall", "Recall", "{:.3f}"),
            ("gs_x1000", "GS x1e3", "{:.2f}")]


def markdown_table(result: dict) -> str:
    """The rows as a markdown table (columns that no row has are left out)."""
    rows = result["rows"]
    cols = [c for c in _COLUMNS if any(c[0] in r for r in rows)]
    lines = ["| set | " + " | ".join(c[1] for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for r in rows:
        cells = [fmt.format(r[key]) if key in r else "-" for key, _, fmt in cols]
        lines.append(f"| {r['set']} | " + " | ".join(cells) + " |")
    proto = result.get("protocol", {})
    if proto.get("feature_extractor"):
        lines.append("")
        lines.append(f"Features: {proto['feature_extractor']}; FID, Prec/Recall and GS against "
                     f"`{proto.get('reference')}`. {proto.get('note', '')}.")
    for w in proto.get("warnings", []):
        lines.append(f"Warning: {w}.")
    return "\n".join(lines) + "\n"
