"""Merged cluster experts: a cheap estimate of any mixture's proxy score, from one run per cluster.

Na et al. (2024, "Scalable Data Ablation Approximations") show that a model trained on a mixture of
data partitions is well approximated, for ranking data choices, by averaging the parameters of
models trained on each partition from a common starting point. Here (`search.experts`, which needs
`search.base`): from the base proxy, one continued run per cluster c on the mixture
`general_share * natural + (1 - general_share) * c` (`tokens` per expert; by default what a proxy run
trains after the base) with the search's seed; the model for a mixture w is then sum_c w_c *
theta_c, so a mixture is scored for the cost of one evaluation (on `eval_tokens` of the target's
validation text). Since every expert holds the general share, the merged model of w stands for
the mixture general_share * natural + (1 - general_share) * w: the same order of mixtures.

Experts are jobs like proxy runs ({"kind": "expert", "run_id": "expert-<cluster>", ...}: the pool
and the DAG's mapped tasks run them through `steps.execute`), staged as `experts/<cluster>.pt`
(the model's state) and `experts/<cluster>.json` (the record, with the state's sha256 and the
base's), the JSON last; a finished expert is returned without training.

Use in the search (`screener`): from iteration 1, the predictor's top `screen` candidates are
scored with merged models and re-ranked by that score before the top N are drawn from
(`bootstrap.propose`/`final`'s `screen` argument); `estimates` scores any mixtures (benchmarks).
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime

import numpy as np

from mixture import storage
from mixture.config import Config
from mixture.config.search import SearchConfig, TargetConfig
from mixture.search import base, proxy
from mixture.search.bootstrap import Screen

log = logging.getLogger(__name__)

FOLDER = "experts"


class ExpertsError(RuntimeError):
    """Experts that are missing or do not fit together."""


def expert_mixture(names: list[str], prior: np.ndarray, cluster: str, general_share: float) -> dict[str, float]:
    """general_share of the natural mixture, the rest on `cluster`."""
    w = general_share * np.asarray(prior, dtype=np.float64) / np.sum(prior)
    w[names.index(cluster)] += 1.0 - general_share
    return dict(zip(names, [float(x) for x in w]))


def jobs(cfg: Config, names: list[str], prior: np.ndarray, base_ref: dict) -> list[dict]:
    """One job per cluster (the clusters' order), continued from the base `base_ref` names."""
    g = cfg.search.experts.general_share
    return [
        {
            "run_id": f"expert-{c}",
            "kind": "expert",
            "cluster": c,
            "mixture": expert_mixture(names, prior, c, g),
            "seed": cfg.seed,
            "proxy_section": "proxy",
            "base": base_ref,
        }
        for c in names
    ]


def rel(cluster: str) -> str:
    return f"{FOLDER}/{cluster}.json"


def screening_target(scfg: SearchConfig) -> TargetConfig:
    """The target with at most `experts.eval_tokens` validation tokens."""
    n = scfg.experts.eval_tokens
    t = scfg.target
    return t if n is None or n >= t.val_tokens else t.model_copy(update={"val_tokens": n})


def expert_steps(scfg: SearchConfig) -> int | None:
    n = scfg.experts.tokens
    return None if n is None else max(1, n // (scfg.proxy.batch_size * scfg.proxy.seq_len))


def execute(cfg: Config, job: dict, out_uri: str, dataset) -> dict:
    """Train one expert unless `out_uri` holds it; stage its state, then its record."""
    from mixture.climblab import ClimbLab

    if storage.exists(out_uri):
        done = storage.read_json(out_uri)
        if done.get("mixture") != job["mixture"] or done.get("base") != job["base"] or done.get("seed") != job["seed"]:
            raise ExpertsError(f"{out_uri} holds another expert than job {job['run_id']}")
        return done
    scfg = cfg.search
    record, state = base.load(job["base"])
    segment = base.continued(scfg, record, state, expert_steps(scfg))
    lab = ClimbLab(dataset)
    result, res = proxy.train_and_evaluate(
        cfg, lab, job["mixture"], job["seed"], scfg.proxy, segment=segment, target=screening_target(scfg)
    )
    data = base.state_bytes(res.model)
    state_uri = out_uri.removesuffix(".json") + ".pt"
    storage.write_bytes(state_uri, data)
    out = {
        **job,
        **result,
        "proxy": scfg.proxy.model_dump(mode="json"),
        "experts": scfg.experts.model_dump(mode="json"),
        "state": storage.basename(state_uri),
        "sha256": hashlib.sha256(data).hexdigest(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    storage.write_json(out_uri, out)
    return out


class Merged:
    """The experts' parameters stacked per tensor; the model of a mixture is their weighted sum."""

    def __init__(self, cfg: Config, lab, states: list[dict], device: str | None = None):
        import torch

        from mixture.search import evaluate

        pcfg = cfg.search.proxy
        self.pcfg = pcfg
        self.device = proxy.device_for(device or pcfg.device)
        self.dtype = proxy.dtype_for(pcfg.dtype, self.device)
        self.model = proxy.build_model(pcfg, lab.vocab_size, lab.eos_id).to(self.device)
        self.stacked = {
            k: torch.stack([s["model"][k] for s in states]).float().to(self.device) for k in states[0]["model"]
        }
        self.target = evaluate.target_for(screening_target(cfg.search), lab.tokenizer_path, lab.eos_id, cfg.seed)

    def load(self, w: np.ndarray) -> None:
        """Set the model to sum_c w_c * theta_c (w normalised to sum 1)."""
        import torch

        w = np.asarray(w, dtype=np.float64)
        if len(w) != len(next(iter(self.stacked.values()))) or (w < 0).any() or w.sum() <= 0:
            raise ExpertsError(f"a merged model needs one non-negative weight per expert, got {w.tolist()}")
        wt = torch.as_tensor(w / w.sum(), dtype=torch.float32, device=self.device)
        merged = {k: torch.tensordot(wt, v, dims=1) for k, v in self.stacked.items()}
        self.model.load_state_dict(merged)

    def score_merged(self, W: np.ndarray) -> np.ndarray:
        """The target score (higher is better) of the merged model of each mixture (row of W)."""
        from mixture.search import evaluate

        autocast = proxy.autocast_for(self.device, self.dtype)
        out = []
        for w in np.atleast_2d(W):
            self.load(w)
            ev = evaluate.evaluate(self.model, self.target, self.pcfg.seq_len, self.device, autocast=autocast)
            out.append(ev["score"])
        return np.array(out, dtype=np.float64)


def merged(cfg: Config, writer, lab, names: list[str]) -> Merged:
    """The merged-model scorer over the staged experts (all of them: ExpertsError naming the missing)."""
    missing = [c for c in names if not writer.has(rel(c))]
    if missing:
        raise ExpertsError(
            f"{len(missing)} cluster experts are not finished (e.g. {missing[:3]}): run the expert jobs first"
        )
    states = []
    for c in names:
        record = storage.read_json(writer.path(rel(c)))
        uri = writer.path(f"{FOLDER}/{record['state']}")
        states.append(base.read_state(uri, record["sha256"]))
    return Merged(cfg, lab, states)


def estimates(cfg: Config, writer, lab, names: list[str], W: np.ndarray) -> np.ndarray:
    """Merged-expert scores of the mixtures W (rows in the clusters' order `names`)."""
    return merged(cfg, writer, lab, names).score_merged(W)


def screener(cfg: Config, writer, lab, names: list[str]) -> Screen | None:
    """bootstrap's `screen` hook: (candidates C, the predictor's order) -> (the order with its first
    `experts.screen` entries sorted by merged score, a report); None when screening is off. The
    experts are loaded on the first call."""
    ecfg = cfg.search.experts
    if not ecfg.enabled or ecfg.screen == 0:
        return None
    held: list[Merged] = []

    def screen(C: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, dict]:
        if not held:
            held.append(merged(cfg, writer, lab, names))
        head = order[: min(ecfg.screen, len(order))]
        scores = held[0].score_merged(C[head])
        by_merged = head[np.argsort(-scores, kind="stable")]
        report = {
            "screened": int(len(head)),
            "merged_scores": scores.tolist(),  # in the predictor's order
            "merged_best": float(scores.max()),
        }
        return np.concatenate([by_merged, order[len(head) :]]), report

    return screen
