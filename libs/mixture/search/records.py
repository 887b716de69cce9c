"""What a finished search writes: the records of `iterations.json`, `mixture.json` and
`target.json`, the final plots and the run's summary lines. Pure functions of the runs and the
final choice (`mixture.search.bootstrap.final`, then the playoff's `mixture.search.playoff`
when it is on); `mixture.search.steps.finish` stages them.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from mixture.config import Config

log = logging.getLogger(__name__)


def target_record(cfg: Config, lab) -> dict:
    """target.json: how the validation text was sampled (which documents, how many tokens) and the
    number of items per task, as every proxy was scored on them (the select part); with
    `search.target.report_share` > 0 also the same of the report part, under `report`."""
    from mixture.search import evaluate

    def part(which: str) -> dict:
        t = evaluate.target_for(cfg.search.target, lab.tokenizer_path, lab.eos_id, cfg.seed, which)
        log.info("search: target (%s) %s", which, {k: v for k, v in t.val_info.items() if k != "document_indices"})
        return {"val": t.val_info or None, "tasks": {name: len(items) for name, items in t.tasks.items()}}

    out = part("select")
    if cfg.search.target.report_share > 0:
        out["report"] = part("report")
    return out


def iteration_records(proposals: list[dict], runs: list[dict]) -> list[dict]:
    """Per iteration (`proposals[i]`: what iteration i proposed): how it proposed, its predictor's
    CV, its runs and how they scored."""
    out = []
    for i, proposed in enumerate(proposals):
        rep = proposed["report"]
        mine = [r for r in runs if r["iteration"] == i]
        out.append(
            {
                "iteration": i,
                "method": rep["method"],
                "reason": rep.get("reason"),
                "observed_before": rep.get("observed", 0),
                "predictor": rep.get("predictor"),
                "candidates": rep.get("candidates"),
                "runs": [
                    {
                        "run_id": r["run_id"],
                        "score": r["score"],
                        "metrics": r.get("metrics", {}),
                        "mixture": r["mixture"],
                        "predicted": r.get("predicted"),
                    }
                    for r in sorted(mine, key=lambda r: r["run_id"])
                ],
                "best_score": max((r["score"] for r in mine if r["score"] is not None), default=None),
                "prospective_spearman": prospective_spearman(mine),
            }
        )
    return out


def mixture_record(
    cfg: Config, names: list[str], prior: np.ndarray, result: dict, runs: list[dict], mixtures: int
) -> dict:
    """mixture.json: the chosen weights, how and why they were chosen, and what they were made of."""

    def named(w) -> dict[str, float]:
        return dict(zip(names, [float(x) for x in w]))

    best, pr = result["best_observed"], result.get("predictor")
    out = {
        "weights": named(result["weights"]),
        "method": result["method"],
        "reason": result.get("reason"),
        "predicted": result.get("predicted"),
        "best_observed": {**best, "weights": named(best["weights"])},
        "predicted_mixture": named(result["predicted_mixture"]) if "predicted_mixture" in result else None,
        "predictor": pr["chosen"] if pr else None,
        "cv_spearman": pr["cv"][pr["chosen"]]["spearman"] if pr else None,
        "trust_region": result.get("trust_region"),  # radius, scale, candidates kept of all; None: off
        "prior": named(prior),
        "runs": len(runs),
        "mixtures": mixtures,
        "score": "higher is better; " + score_doc(cfg),
        "target": cfg.search.target.model_dump(mode="json"),
        # what the baselines stage checks to reuse this search when only the transfer settings changed
        "config": {"seed": cfg.seed, "search": cfg.search.model_dump(mode="json")},
    }
    if "playoff" in result:  # the noise-aware final choice (mixture.search.playoff), when on
        out["playoff"] = result["playoff"]
        out["search_choice"] = result.get("search_choice")
    return out


def final_plots(names: list[str], prior: np.ndarray, result: dict, iterations: list[dict]) -> dict[str, bytes]:
    from mixture.search import plots

    best = result["best_observed"]
    files = {
        "weights.png": plots.weights(
            names,
            {"prior": prior.tolist(), "final": result["weights"], "best observed": best["weights"]},
            "final mixture",
        ),
        "progress.png": plots.progress(
            [[r["score"] for r in it["runs"] if r["score"] is not None] for it in iterations]
        ),
    }
    if result.get("predictor"):
        chosen = result["predictor"]["chosen"]
        files["scatter.png"] = plots.scatter(
            result["y"],
            result["oof"][chosen],
            f"final: {chosen}, CV Spearman {result['predictor']['cv'][chosen]['spearman']:.2f}",
        )
    return files


def summary(cfg: Config, result: dict, mixture: dict, iterations: list[dict], n_runs: int) -> list[tuple[str, Any]]:
    best = result["best_observed"]
    top = sorted(mixture["weights"].items(), key=lambda kv: -kv[1])[:5]

    def cv(it: dict) -> str:
        if not it["predictor"]:
            return "none (random)"
        return ", ".join(f"{n} {v['spearman']:.2f}" for n, v in it["predictor"]["cv"].items())

    lines = [
        ("runs", f"{n_runs} proxy runs in {len(iterations)} iterations ({cfg.search.iterations})"),
        ("final mixture", f"{result['method']}: " + ", ".join(f"{c} {w:.3f}" for c, w in top)),
        ("why", result.get("reason")),
        ("trust region", _region(result.get("trust_region"), cfg.search.trust_region)),
        ("predictor CV Spearman by iteration", "; ".join(f"it{it['iteration']}: {cv(it)}" for it in iterations)),
        ("best observed score", f"{best['score']:.4f} ({', '.join(best['run_ids'])})"),
    ]
    if result.get("playoff"):
        lines += playoff_summary(result["playoff"])
    return lines


def _region(region: dict | None, scale: float) -> str:
    if not region:
        off = "off (search.trust_region: 0): candidates anywhere"
        return off if scale <= 0 else "not used: the final is a trained mixture"
    return f"radius {region['radius']:.3f} (Hellinger): {region['kept']:,} of {region['of']:,} candidates"


def finalist_proxy(rec: dict) -> dict:
    """The proxy settings the playoff's finalists trained with (a record written before
    `playoff.tokens_factor` names them `transfer_proxy`)."""
    return rec.get("proxy") or rec["transfer_proxy"]


def playoff_summary(rec: dict) -> list[tuple[str, str]]:
    """The summary's lines on the seed noise and the playoff (`mixture.search.playoff.record`)."""
    p = rec["noise"]["proxy"]
    if p["sd"] is None:
        noise = "not estimated (no mixture has two finished proxy runs: playoff.anchor_seeds 0?)"
    else:
        anchors = "; ".join(
            f"{n} x{len(a['scores'])} mean {a['mean']:.4f}" for n, a in p["anchors"].items() if a["scores"]
        )
        within = p.get("within_noise_of_best_observed")
        noise = f"proxy-scale seed sd {p['sd']:.4f} ({p['df']} degrees of freedom; {anchors})"
        if within is not None:
            noise += (
                f"; {within} observed mixtures within {rec['noise']['noise_z']:g} standard errors of the best observed"
            )
        if (ceiling := p.get("rank_ceiling")) is not None:
            noise += f"; with this noise a predictor's Spearman on the observed runs tops out near {ceiling:.2f}"
    lines = [("seed noise", noise)]
    if rec["winner"] is None:
        return lines + [("playoff", f"no winner: {rec['reason']}")]
    tp = finalist_proxy(rec)
    scores = ", ".join(
        f"{f['name']} {f['mean']:.4f}" + (f" ± {f['sd']:.4f}" if f["sd"] is not None else "")
        if f["mean"] is not None
        else f"{f['name']} -"
        for f in rec["finalists"]
    )
    tied = f"; tied within the noise: {', '.join(rec['tied'])}" if len(rec["tied"]) > 1 else ""
    return lines + [
        (
            "playoff",
            f"{rec['winner']} wins among {len(rec['finalists'])} finalists x {rec['seeds']} seeds at "
            f"{tp['preset']} on {tp['tokens']:,} tokens: {scores}{tied}",
        )
    ]


def prospective_spearman(runs: list[dict]) -> float | None:
    """Spearman between what the predictor expected of an iteration's runs before they were
    trained and what they scored: an out-of-sample check that no cross-validation can give."""
    from mixture.search.predictor import spearman

    pairs = [
        (r["predicted"], r["score"]) for r in runs if r.get("predicted") is not None and r.get("score") is not None
    ]
    if len(pairs) < 3:
        return None
    p, y = zip(*pairs)
    return spearman(np.array(p), np.array(y))


def score_doc(cfg: Config) -> str:
    t = cfg.search.target
    parts = []
    if t.val_uris:
        parts.append(f"val: -{t.metric}")
    if t.tasks:
        parts.append(f"tasks: {t.task_metric}")
    return "weighted mean of " + ", ".join(parts) if parts else "no target configured"
