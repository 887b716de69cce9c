"""The cluster report's files: report.md rendered from the report dict, report.json, and map.png
(a PCA projection of a sample of the embeddings coloured by final cluster, pruned documents in
grey; matplotlib's Agg backend); staged into the clusters dataset and logged to MLflow with the
stage's counts and the purity/NMI figures (`stage_report`).

The dict itself is built by `mixture.cluster.report`; with the user's groups there are no
embeddings, so there is no map.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mixture import storage
from mixture.config import Config


def _num(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def render_markdown(rep: dict[str, Any]) -> str:
    if rep.get("method", "kmeans") == "kmeans":
        lines = _kmeans_header(rep) + ["", "![map](map.png)", ""]
    else:
        lines = _groups_header(rep) + [""]
    return "\n".join(lines + _cluster_tables(rep) + _quality_lines(rep["quality"]))


def _kmeans_header(rep: dict[str, Any]) -> list[str]:
    km, pr, mg, q, ev = rep["kmeans"], rep["pruning"], rep["merge"], rep["quality"], rep["evaluation"]
    lines = ["# Cluster report", ""]
    lines.append(
        f"{km['documents']:,} documents, embedded with `{rep.get('embedding_model')}`. "
        f"k-means K={km['k']} (asked {km['k_requested']}; trained on {km['train_points']:,} "
        f"documents, {km['niter']} iterations, nredo {km['nredo']}, seed {km['seed']}, "
        f"{'GPU' if km['gpu'] else 'CPU'}; mean cosine to centroid {km['mean_cosine']})."
    )
    pruned_total = sum(v["clusters"] for v in pr["pruned"].values())
    pruned_docs = sum(v["documents"] for v in pr["pruned"].values())
    lines.append(
        f"Pruned {pruned_total} k-means clusters ({pruned_docs:,} documents): "
        + (", ".join(f"{k} {v['clusters']}" for k, v in pr["pruned"].items()) or "none")
        + f" (quality scorer `{q['scorer']}` below {pr['min_cluster_quality']} on 1-5, "
        f"or fewer than {pr['min_cluster_size']} documents)."
    )
    lines.append(
        f"Ward merge of {mg['kept_kmeans_clusters']} centroids: {mg['groups_at_distance']} groups at "
        f"distance {mg['merge_distance']}, target {mg['target_clusters']} -> "
        f"**{mg['final_clusters']} final clusters** (last merge height {mg['last_applied_height']}, "
        f"next {mg['next_height']})."
    )
    if ev.get("final"):
        lines.append(
            f"Against the `source` labels (evaluation only): k-means purity {ev['init']['purity']}, "
            f"NMI {ev['init']['nmi']}; final purity {ev['final']['purity']}, NMI {ev['final']['nmi']}."
        )
    return lines


def _groups_header(rep: dict[str, Any]) -> list[str]:
    g, q = rep["groups"], rep["quality"]
    how = (
        f"the curated field `{g['field']}`"
        + (f" through the mapping `{g['mapping']}` (values without an entry: {g['unmapped']})" if g["mapping"] else "")
        if g["method"] == "field"
        else f"the assignments file `{g['assignments']}`"
    )
    pruned = [x for x in g["groups"] if x["pruned"]]
    lines = [
        "# Cluster report: the user's groups",
        "",
        f"{g['documents']:,} documents grouped by {how} (cluster.method {g['method']}; no embeddings, "
        f"no k-means): {len(g['groups'])} groups, **{len(rep['clusters'])} final clusters** numbered by size.",
        "Documents without a group (cluster -1): "
        + (", ".join(f"{k} {v:,}" for k, v in g["ungrouped"].items()) or "none")
        + ".",
        f"Pruned {len(pruned)} groups ({sum(x['documents'] for x in pruned):,} documents): "
        + (", ".join(f"{x['group']} ({x['pruned']})" for x in pruned) or "none")
        + f" (quality scorer `{q['scorer']}` below {g['min_cluster_quality']} on 1-5, or fewer than "
        f"{g['min_cluster_size']} documents).",
    ]
    if g["method"] == "assignments":
        lines.append(
            f"Ids in the assignments file that are not curated documents: {g['unknown_ids']:,}"
            + (f" (e.g. {', '.join(g['unknown_id_examples'])})" if g["unknown_ids"] else "")
            + "."
        )
    return lines


def _origin(c: dict[str, Any]) -> str:
    if "kmeans_clusters" in c:
        return f"from k-means clusters {c['kmeans_clusters']}"
    values = c.get("values")
    merged = f" (values {', '.join(values)})" if values and values != [c["group"]] else ""
    return f"of the user group `{c['group']}`{merged}"


def _cluster_tables(rep: dict[str, Any]) -> list[str]:
    lines = [
        "| cluster | documents | words | tokens (est.) | quality | top terms | top source (share) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in rep["clusters"]:
        top_src = next(iter(c.get("source_mix", {}).items()), None)
        label = f"{c['cluster']} ({c['name']}: {c['group']})" if "group" in c else f"{c['cluster']}"
        lines.append(
            f"| {label} | {c['documents']:,} | {_num(c['words'])} | "
            f"{_num(c['tokens_est'])} | {c['mean_quality']:.2f} | "
            f"{', '.join(t for t, _ in c['top_terms'][:6])} | "
            f"{f'{top_src[0]} ({top_src[1]:.0%})' if top_src else '-'} |"
        )
    for c in rep["clusters"]:
        lines += [
            "",
            f"## Cluster {c['cluster']}",
            "",
            f"{c['documents']:,} documents {_origin(c)}; mean scores "
            + ", ".join(f"{k} {v:.2f}" for k, v in c["mean_scores"].items())
            + ".",
            "",
            "Top terms: " + ", ".join(f"{t} ({s:.3f})" for t, s in c["top_terms"]),
            "",
        ]
        if c.get("source_mix"):
            lines.append(
                "Source mix (evaluation only): "
                + ", ".join(f"{s} {v:.0%}" for s, v in list(c["source_mix"].items())[:6])
                + f"; purity {c['purity']:.2f}"
            )
            lines.append("")
        for s in c["snippets"]:
            lines.append(f"> `{s['id']}`: {s['text']}")
            lines.append(">")
        if c["snippets"]:
            lines.pop()
    return lines


def _quality_lines(q: dict[str, Any]) -> list[str]:
    return [
        "",
        "## Quality scores",
        "",
        f"Scorer driving pruning: `{q['scorer']}`. Mean per scorer: "
        + ", ".join(f"{k} {v:.2f}" for k, v in q["mean"].items())
        + ".",
        "",
        "```json",
        json.dumps(q["notes"], indent=1, default=str),
        "```",
        "",
    ]


def plot_map(points: np.ndarray, labels: np.ndarray, k: int, seed: int, path: Path) -> None:
    """PCA of the sampled documents' embeddings `points`, coloured by final cluster `labels`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    pick = np.arange(len(points))
    pca = PCA(n_components=2, random_state=seed).fit(points) if len(pick) >= 2 else None
    fig, ax = plt.subplots(figsize=(9, 7), dpi=110)
    if pca is not None:
        xy = pca.transform(points)
        lab = labels
        size = 24 if len(pick) < 1000 else 6
        pruned = lab < 0
        if pruned.any():
            ax.scatter(xy[pruned, 0], xy[pruned, 1], s=size / 2, c="#c8c8c8", linewidths=0, label="pruned")
        cmap = plt.get_cmap("tab10" if k <= 10 else "tab20" if k <= 20 else "gist_ncar")
        colors = [cmap(i) for i in range(k)] if k <= 20 else list(cmap(np.linspace(0.02, 0.95, k)))
        for c in range(k):
            sel = lab == c
            if not sel.any():
                continue
            ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=colors[c], linewidths=0, label=f"{c}")
            # label at the middle of the cluster's points as drawn (inside the axes)
            cx, cy = np.median(xy[sel], axis=0)
            ax.annotate(
                str(c),
                (cx, cy),
                fontsize=10,
                weight="bold",
                ha="center",
                va="center",
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.8, "lw": 0},
            )
        ax.legend(
            loc="best",
            fontsize=7,
            markerscale=1.5,
            ncol=2 if k > 10 else 1,
            title="cluster",
            title_fontsize=8,
            framealpha=0.8,
        )
    ax.set_title(f"{k} clusters, PCA of {len(pick):,} documents (grey: pruned)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def write_report(
    rep: dict[str, Any],
    folder: Path,
    *,
    points: tuple[np.ndarray, np.ndarray] | None,
    n_clusters: int,
    seed: int,
) -> list[Path]:
    """report.json, report.md and, when there are embeddings to project (`points`: the map's
    sampled documents and their final clusters), map.png."""
    folder.mkdir(parents=True, exist_ok=True)
    md, js, png = folder / "report.md", folder / "report.json", folder / "map.png"
    js.write_text(json.dumps(_jsonable(rep), indent=1, sort_keys=False) + "\n")
    md.write_text(render_markdown(rep))
    if points is None:
        return [md, js]
    plot_map(points[0], points[1], n_clusters, seed, png)
    return [md, js, png]


def stage_report(
    cfg: Config,
    writer,
    rep: dict[str, Any],
    *,
    points: tuple[np.ndarray, np.ndarray] | None,
    n_clusters: int,
    metrics: dict[str, float],
) -> None:
    """The report files into the staged dataset, and into an MLflow run with the cluster config,
    the report's counts, purity and NMI, and `metrics`."""
    with tempfile.TemporaryDirectory() as tmp:
        for path in write_report(rep, Path(tmp), points=points, n_clusters=n_clusters, seed=cfg.seed):
            storage.write_bytes(writer.path(path.name), path.read_bytes())
        log_mlflow(cfg, rep, Path(tmp), metrics)


def log_mlflow(cfg: Config, rep: dict[str, Any], folder: Path, extra_metrics: dict[str, float]) -> None:
    """An MLflow run `cluster`, nested under a parent run when one is active (a whole-pipeline
    run), else a run of its own; the report files as its artifacts."""
    import mlflow

    from mixture import tracking

    with (
        tracking.recorded(cfg, "cluster"),
        tracking.run(cfg, "cluster", nested=mlflow.active_run() is not None, tags={"stage": "cluster"}),
    ):
        mlflow.log_params(tracking.flat_params("cluster", cfg.cluster.model_dump(mode="json")))
        metrics = {k: float(v) for k, v in rep["counts"].items() if isinstance(v, (int, float))}
        metrics.update(extra_metrics)
        for level in ("init", "final"):
            ev = rep["evaluation"].get(level)
            if ev:
                metrics[f"purity_{level}"] = ev["purity"]
                metrics[f"nmi_{level}"] = ev["nmi"]
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(folder))
