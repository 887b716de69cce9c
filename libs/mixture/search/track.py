"""MLflow records of a search: one experiment per search configuration, runs nested in it.

    experiment  "<tracking.experiment>-<run_name>-search" (MLflow's model-training kind)
      "search <run_name>: iterations 4+2"  (parent; one per search: its config's staging key)
                params search.*, final metrics, mixture.json, the final scatter / weights /
                progress figures
        "iteration 0: 4 mixtures, random"  predictors' CV Spearman and MAE (cv.<name>.spearman),
                the chosen predictor, scatter of its out-of-fold predictions, proposed weights,
                the top-N candidate table
          "it0-003 s0: c02 41%, c00 30%, c01 18%"  a proxy run (iteration, index, seed, its
                largest weights): params w.<cluster> (every cluster, zeros included, so any two
                proxy runs compare side by side), proxy.*, seed, iteration, run_id; metrics:
                score, component.<name> (the target's parts), the target metrics, predicted (the
                predictor's prediction for the mixture, from iteration 1 on), train.loss per step
        "playoff: <finalist>: c02 41%, ..."  (with `search.playoff` on) one per finalist: params
                w.<cluster> and proxy.* (the transfer proxy), finalist, seeds; metrics under the
                proxy runs' keys (score, val.bpb, ...: the mean over seeds) plus score.sd,
                score.seeds (one step per seed), predicted, kl_prior, won, tied
      "baselines"  (the `baselines` stage) with "baseline: <method>: c02 41%, ..." runs nested
    `leaderboard_url` links to the proxy runs, best score first, with the score, the prediction and
    the weights as columns (`VIEW_TAG`: a view the UI opens from the link).

Every write is idempotent: runs are found again by their tags (`climb.search`, `climb.kind`,
`climb.iteration`, `climb.run_id`), so a resumed search or a retried Airflow task does not log a
proxy twice. The client API is used rather than MLflow's "active run" so that several runs can be
written from one process in any order.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from mixture import tracking
from mixture.config import Config
from mixture.search import records

KIND_SEARCH, KIND_ITERATION, KIND_PROXY, KIND_PLAYOFF = "search", "iteration", "proxy", "playoff"
PROXIES = f"tags.`climb.kind` = '{KIND_PROXY}'"
# A view of the runs table that MLflow's UI opens from a link (`?viewStateShareKey=`): the proxy
# runs, flat (sorted by a metric, MLflow un-nests runs), best score first, with the score, the
# prediction and the weights as columns. Stored as an experiment tag, as the UI's "Share" does.
VIEW_KEY = "climb-proxies"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
MAX_BATCH = 900  # MLflow accepts 1000 metrics per log_batch


def experiment_name(cfg: Config) -> str:
    return f"{cfg.tracking.experiment}-{cfg.run_name}-search"


def leaderboard_url(cfg: Config) -> str | None:
    """The search's proxy runs, flat and best score first, as a link into MLflow's UI
    (`tracking.experiment_url`); None when the store holds no search or cannot be read."""
    from mlflow.tracking import MlflowClient

    try:
        exp = MlflowClient(tracking.tracking_uri(cfg)).get_experiment_by_name(experiment_name(cfg))
    except Exception as err:
        if not tracking.store_failure(err):
            raise
        return None
    if exp is None:
        return None
    ui = tracking.ui_address(cfg)
    if VIEW_TAG in exp.tags:
        return tracking.experiment_url(ui, exp.experiment_id, viewStateShareKey=VIEW_KEY)
    return tracking.experiment_url(
        ui, exp.experiment_id, searchFilter=PROXIES, orderByKey="metrics.`score`", orderByAsc="false"
    )


def proxies_view(clusters: list[str]) -> str:
    """`VIEW_TAG`'s value: the UI's shared view state (JSON) with a column per cluster's weight."""
    state = {"searchFilter": PROXIES, "orderByKey": "metrics.`score`", "orderByAsc": False}
    columns = ["metrics.`score`", "metrics.`predicted`"] + [f"params.`w.{c}`" for c in sorted(clusters)]
    while len(json.dumps({**state, "selectedColumns": columns})) > 15000:  # MLflow: tag values <= 20000
        columns.pop()
    return json.dumps({**state, "selectedColumns": columns})


def mixture_label(weights: dict[str, float], top: int = 3) -> str:
    """A mixture in a few words for a run's name: its largest weights, e.g. `c02 41%, c00 30%`."""
    largest = sorted(weights.items(), key=lambda cw: (-cw[1], cw[0]))[:top]
    return ", ".join(f"{c} {w:.0%}" for c, w in largest if round(w, 2) > 0) or "empty"


def proxy_name(run: dict) -> str:
    """`it<i>-<index> s<seed>: <largest weights>`: which iteration, which mixture."""
    rid = str(run["run_id"])
    short = "-".join(rid.split("-")[:2]) + " " + rid.rsplit("-", 1)[-1] if rid.startswith("it") else rid
    return f"{short}: {mixture_label(run['mixture'])}"


class SearchTracker:
    def __init__(self, cfg: Config, search_key: str, experiment: str | None = None):
        from mlflow.tracking import MlflowClient

        self.cfg = cfg
        self.key = search_key
        self.experiment_id = tracking.setup(cfg, experiment or experiment_name(cfg))
        self.client = MlflowClient(tracking.tracking_uri(cfg))

    # ------------------------------------------------------------------------- finding runs
    def _find(self, **tags: str) -> list:
        clauses = [f"tags.`climb.search` = '{self.key}'"]
        clauses += [f"tags.`climb.{k}` = '{v}'" for k, v in tags.items()]
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], " and ".join(clauses), max_results=1000, page_token=token
            )
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def _create(self, name: str, parent: str | None, **tags: str) -> str:
        all_tags = {"climb.search": self.key, **{f"climb.{k}": v for k, v in tags.items()}}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        return self.client.create_run(self.experiment_id, tags=all_tags, run_name=name).info.run_id

    def parent(self) -> str:
        found = self._find(kind=KIND_SEARCH)
        if found:
            return found[0].info.run_id
        plan = "+".join(str(n) for n in self.cfg.search.iterations)
        run_id = self._create(f"search {self.cfg.run_name}: iterations {plan}", None, kind=KIND_SEARCH)
        params = tracking.flat_params("search", self.cfg.search.model_dump(mode="json"))
        params["seed"] = self.cfg.seed
        self._log(run_id, params=params)
        return run_id

    def iteration(self, i: int) -> str:
        found = self._find(kind=KIND_ITERATION, iteration=str(i))
        if found:
            return found[0].info.run_id
        return self._create(f"iteration {i}", self.parent(), kind=KIND_ITERATION, iteration=str(i))

    def logged_proxies(self) -> set[str]:
        return {r.data.tags.get("climb.run_id") for r in self._find(kind=KIND_PROXY)}

    # ---------------------------------------------------------------------------- writing
    def _log(
        self,
        run_id: str,
        params: dict | None = None,
        metrics: dict | None = None,
        steps: list[tuple[str, int, float]] | tuple[()] = (),
    ) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        ms = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if v is not None]
        ms += [Metric(k, float(v), now, int(s)) for k, s, v in steps]
        for i in range(0, max(len(ps), 1), 100):  # MLflow: at most 100 params per batch
            if ps[i : i + 100]:
                self.client.log_batch(run_id, params=ps[i : i + 100])
        for i in range(0, len(ms), MAX_BATCH):
            self.client.log_batch(run_id, metrics=ms[i : i + MAX_BATCH])

    def _artifacts(self, run_id: str, files: dict[str, bytes | str]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                path = os.path.join(tmp, name)
                with open(path, "wb") as f:
                    f.write(data.encode() if isinstance(data, str) else data)
                self.client.log_artifact(run_id, path)

    def log_iteration(self, i: int, report: dict, jobs: list[dict], files: dict[str, bytes | str]) -> None:
        run_id = self.iteration(i)
        self.client.update_run(run_id, name=f"iteration {i}: {len(jobs)} proxy runs, {report.get('method')}")
        if jobs:
            self.client.set_experiment_tag(self.experiment_id, VIEW_TAG, proxies_view(list(jobs[0]["mixture"])))
        metrics = {"proposed": len(jobs), "observed": report.get("observed", 0)}
        params = {"method": report.get("method"), "iteration": i}
        pr = report.get("predictor")
        if pr:
            params["predictor"] = pr["chosen"]
            for name, cv in pr["cv"].items():
                metrics[f"cv.{name}.spearman"] = cv["spearman"]
                metrics[f"cv.{name}.mae"] = cv["mae"]
            metrics["cv.chosen.spearman"] = pr["cv"][pr["chosen"]]["spearman"]
            metrics["candidates"] = report.get("candidates", 0)
            if report.get("best_observed_score") is not None:
                metrics["best_observed.score"] = report["best_observed_score"]
        self._log(run_id, params=params, metrics=metrics)
        self._artifacts(run_id, files)
        self.client.set_terminated(run_id, "FINISHED")

    def log_proxy(self, run: dict, logged: set[str] | None = None) -> bool:
        """One proxy run as a nested run of its iteration; False when it was logged before."""
        logged = self.logged_proxies() if logged is None else logged
        if run["run_id"] in logged:
            return False
        run_id = self._create(
            proxy_name(run),
            self.iteration(run["iteration"]),
            kind=KIND_PROXY,
            iteration=str(run["iteration"]),
            run_id=run["run_id"],
        )
        params = {f"w.{c}": w for c, w in sorted(run["mixture"].items())}
        params.update(tracking.flat_params("proxy", run.get("proxy", {})))
        params.update(seed=run["seed"], iteration=run["iteration"], run_id=run["run_id"])
        if run.get("base"):  # search.base: the base proxy it continued from
            params["base.sha256"] = run["base"]["sha256"]
        metrics = dict(run.get("metrics", {}))
        metrics["score"] = run.get("score")
        metrics.update({f"component.{c}": v for c, v in (run.get("components") or {}).items()})
        metrics["predicted"] = run.get("predicted")  # None (not logged) before the first predictor
        train = run.get("train") or {}
        for k in ("seconds", "tokens_per_s", "params", "tokens"):
            if k in train:
                metrics[f"train.{k}"] = train[k]
        for k in ("seconds", "eval_seconds"):  # timings: here, not in the committed record
            if k in run:
                metrics[k] = run[k]
        steps = [("train.loss", s, v) for s, v in run.get("loss_curve", [])]
        self._log(run_id, params=params, metrics=metrics, steps=steps)
        self.client.set_terminated(run_id, "FINISHED" if run.get("score") is not None else "FAILED")
        logged.add(run["run_id"])
        return True

    def log_final(self, result: dict, files: dict[str, bytes | str]) -> None:
        run_id = self.parent()
        metrics = {
            "final.predicted": result.get("predicted"),
            "best_observed.score": result["best_observed"]["score"],
            "runs": result.get("runs"),
        }
        pr = result.get("predictor")
        if pr:
            for name, cv in pr["cv"].items():
                metrics[f"cv.{name}.spearman"] = cv["spearman"]
                metrics[f"cv.{name}.mae"] = cv["mae"]
        self._log(
            run_id,
            params={"final.method": result["method"], "final.predictor": pr["chosen"] if pr else "none"},
            metrics=metrics,
        )
        self._artifacts(run_id, files)
        self.client.set_terminated(run_id, "FINISHED")

    def log_playoff(self, rec: dict) -> None:
        """One run per finalist nested under the search run (`mixture.search.playoff.record`),
        comparable side by side with each other and with the proxy runs; idempotent on resume."""
        parent = self.parent()
        done = {r.data.tags.get("climb.finalist") for r in self._find(kind=KIND_PLAYOFF)}
        for f in rec["finalists"]:
            if f["name"] in done:
                continue
            name = f"playoff: {f['name']}: {mixture_label(f['weights'])}"
            run_id = self._create(name, parent, kind=KIND_PLAYOFF, finalist=f["name"])
            params = {f"w.{c}": w for c, w in sorted(f["weights"].items())}
            params.update(tracking.flat_params("proxy", records.finalist_proxy(rec)))
            params.update(finalist=f["name"], seeds=rec["seeds"], also=",".join(f["also"]) or "-")
            metrics = {
                **f["metrics"],
                "score": f["mean"],
                "score.sd": f["sd"],
                "predicted": f["predicted"],
                "kl_prior": f["kl_prior"],
                "won": float(f["name"] == rec["winner"]),
                "tied": float(f["name"] in rec["tied"]),
            }
            steps = [("score.seeds", s, v) for s, v in enumerate(f["seed_scores"]) if v is not None]
            self._log(run_id, params=params, metrics=metrics, steps=steps)
            self.client.set_terminated(run_id, "FINISHED" if f["mean"] is not None else "FAILED")
        noise = rec["noise"]
        self._log(
            parent,
            params={"playoff.winner": rec["winner"] or "none"},
            metrics={
                "playoff.noise.sd": (noise["transfer"] or {}).get("sd"),
                "noise.proxy.sd": noise["proxy"]["sd"],
                "noise.proxy.rank_ceiling": noise["proxy"].get("rank_ceiling"),
                "playoff.tied": len(rec["tied"]),
            },
        )

    def log_baselines(self, results: dict, files: dict[str, bytes | str]) -> None:
        """One parent run for the baselines and a nested run per method (params `w.<cluster>`,
        mean and std of every metric at proxy and transfer scale); idempotent on resume."""
        found = self._find(kind="baselines")
        parent = found[0].info.run_id if found else self._create("baselines", None, kind="baselines")
        for m, r in results["methods"].items():
            if self._find(kind="baseline", method=m):
                continue
            run_id = self._create(f"baseline: {m}: {mixture_label(r['weights'])}", parent, kind="baseline", method=m)
            params = {f"w.{c}": w for c, w in sorted(r["weights"].items())}
            params.update(method=m, transfer_seeds=results["transfer_seeds"])
            metrics = {
                f"{scale}.{k}.{stat}": s[stat]
                for scale in ("proxy", "transfer")
                for k, s in r[scale].items()
                if isinstance(s, dict) and s.get("mean") is not None
                for stat in ("mean", "std")
            }
            self._log(run_id, params=params, metrics=metrics)
            self.client.set_terminated(run_id, "FINISHED")
        self._log(
            parent,
            metrics={
                "climb_beats_every_baseline": float(results["climb_beats_every_baseline"]),
                "regmix.cv_spearman": results["regmix"]["cv_spearman"],
            },
        )
        self._artifacts(parent, files)
        self.client.set_terminated(parent, "FINISHED")
