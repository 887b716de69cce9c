"""The noise-aware final choice: finalists, seed noise, the playoff at transfer scale, its budget,
its records and resume; and the target's report part, which no selection reads."""

import gzip
import json
from collections import defaultdict
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mixture import pipeline, storage
from mixture.config import SearchConfig, parse_config
from mixture.search import bootstrap, noise, playoff, steps, track
from mixture.search.sampler import mixture_keys, sample_mixtures
from mixture.search.synthetic import SyntheticObjective, calibrated, make_climblab
from mixture.stages import search as stage

REPO = Path(__file__).resolve().parents[2]
TARGET = REPO / "data" / "sample" / "target_val.jsonl.gz"
NAMES = ["c00", "c01", "c02", "c03"]
K = 8


# ------------------------------------------------------------------------------- finalists
def _scfg(**playoff_kw):
    return SearchConfig(
        iterations=[12, 6],
        candidates=3000,
        top_n=12,
        top_k=16,
        predictor=dict(min_child_samples=3, min_data_in_bin=1, cv_folds=4),
        playoff=dict(enabled=True, **playoff_kw),
    )


def _observed(seed: int, scfg: SearchConfig):
    prior = np.random.default_rng(100 + seed).dirichlet(np.full(K, 2.0))
    optimum = sample_mixtures(np.random.default_rng(900 + seed), prior, 1, concentration=(0.3, 0.3))[0]
    obj = calibrated(prior, optimum)
    _, obs, _ = bootstrap.run_search(scfg, prior, obj, seed=seed)
    return prior, obs


@pytest.mark.parametrize("seed", [0, 1])
def test_finalists_are_distinct_valid_mixtures_and_match_the_searchs_own_choice(seed):
    scfg = _scfg(finalists=["predicted", "kl_prior", "top_mean", "best_observed", "best_fitted"])
    prior, obs = _observed(seed, scfg)
    finals, predictor = playoff.choose_finalists(scfg, prior, obs, seed)
    assert predictor is not None
    named = [f["name"] for f in finals] + [a for f in finals for a in f["also"]]
    assert sorted(named) == sorted(scfg.playoff.finalists)  # every finalist, merged or not
    W = np.array([f["weights"] for f in finals])
    assert len(set(mixture_keys(W, scfg.weight_floor))) == len(finals) >= 2  # distinct
    assert np.allclose(W.sum(axis=1), 1) and (W >= 0).all()
    assert (W <= scfg.epoch_cap * prior / prior.sum() + 1e-9).all()  # within the epoch caps
    by = {n: f for f in finals for n in [f["name"], *f["also"]]}
    # the finalists are the search's own choices: `final: best` and `final: top_mean`
    for final, name in (("best", "predicted"), ("top_mean", "top_mean")):
        res = bootstrap.final(scfg.model_copy(update={"final": final}), prior, obs, seed)
        np.testing.assert_allclose(by[name]["weights"], res.get("predicted_mixture", res["weights"]))
    np.testing.assert_allclose(by["best_observed"]["weights"], obs.X[obs.best()])
    # best_fitted: the trained mixture `final: best_fitted` commits (its fallback off)
    predictor = scfg.predictor.model_copy(update={"min_spearman": -1.0})
    unguarded = scfg.model_copy(update={"final": "best_fitted", "predictor": predictor})
    res = bootstrap.final(unguarded, prior, obs, seed)
    assert res["method"] == "best_fitted"
    np.testing.assert_allclose(by["best_fitted"]["weights"], res["weights"])
    assert any(np.allclose(by["best_fitted"]["weights"], x) for x in obs.X)  # a trained mixture
    assert by["best_observed"]["observed"] == obs.y.max()
    # the KL-regularised optimum gives up predicted score for closeness to the prior
    assert by["kl_prior"]["kl_prior"] <= by["predicted"]["kl_prior"]
    assert by["kl_prior"]["predicted"] <= by["predicted"]["predicted"]


def test_finalists_use_the_predictor_the_search_fits_with_the_targets_components():
    """With runs that record the target's components, `mixing_law_components` is fitted on them:
    the finalists come from that same predictor, so the top_mean finalist is the search's own."""
    from mixture.search.synthetic import random_components

    scfg = _scfg(finalists=["top_mean", "best_fitted"])
    predictor = scfg.predictor.model_copy(update={"candidates": ["mixing_law_components"], "min_spearman": -1.0})
    prior = np.random.default_rng(2).dirichlet(np.full(K, 2.0))
    objective = random_components(prior, seed=2)  # a problem where fits with and without them differ
    target = scfg.target.model_copy(update={"weights": objective.weights})  # the score's weights
    scfg = scfg.model_copy(update={"predictor": predictor, "target": target})
    _, obs, _ = bootstrap.run_search(scfg, prior, objective, seed=0)
    assert bootstrap.contributions(scfg, obs) is not None  # the components add up to the scores
    finals, report = playoff.choose_finalists(scfg, prior, obs, 0)
    assert report["chosen"] == "mixing_law_components"
    by = {n: f for f in finals for n in [f["name"], *f["also"]]}
    for final in ("top_mean", "best_fitted"):
        res = bootstrap.final(scfg.model_copy(update={"final": final}), prior, obs, 0)
        assert res["method"] == final
        np.testing.assert_allclose(by[final]["weights"], res["weights"])


def test_the_playoff_in_one_process_keeps_the_searchs_choice_unless_beaten_beyond_the_noise():
    scfg = _scfg(seeds=3, anchor_seeds=3, budget_share=1.0, tokens_factor=None)
    scfg = scfg.model_copy(update={"transfer_proxy": scfg.proxy})
    prior, obs = _observed(0, scfg)
    obj = SyntheticObjective(np.full(K, 1 / K), noise=0.05)
    result = bootstrap.final(scfg, prior, obs, 0)
    rec = playoff.run_playoff(scfg, prior, obs, obj, obj, seed=0, search_method=result["method"])
    assert rec["tie_break"]["search_choice"] in {f["name"] for f in rec["finalists"]}
    if rec["tie_break"]["search_choice"] in rec["tied"]:
        assert rec["winner"] == rec["tie_break"]["search_choice"]
    assert rec["noise"]["proxy"]["df"] == 2 + 2  # natural x3 and the best observed x3
    out = playoff.apply(result, rec, [f"c{i:02d}" for i in range(K)])
    assert out["method"] == "playoff" and sum(out["weights"]) == pytest.approx(1.0)
    assert out["search_choice"]["method"] == result["method"]


def test_kl_lambda_moves_the_kl_finalist_from_the_predicted_optimum_to_the_prior():
    free = _scfg(kl_lambda=0.0, finalists=["predicted", "kl_prior", "top_mean", "best_observed"])
    prior, obs = _observed(0, free)
    finals, _ = playoff.choose_finalists(free, prior, obs, 0)
    assert "kl_prior" in next(f for f in finals if f["name"] == "predicted")["also"]  # no penalty: the same
    tight = free.model_copy(update={"playoff": free.playoff.model_copy(update={"kl_lambda": 1e3})})
    finals, _ = playoff.choose_finalists(tight, prior, obs, 0)
    kl = next(f for f in finals if f["name"] == "kl_prior")["kl_prior"]
    C, _ = bootstrap.final_candidates(tight, prior, obs, 0)  # within the trust region
    assert kl == pytest.approx(playoff.kl_to_prior(C, prior).min())  # the candidate nearest the prior


# ------------------------------------------------------------------------------- the playoff
def _at_value(obj: SyntheticObjective, target: float) -> np.ndarray:
    """A mixture on the line from the optimum to uniform whose noiseless score is `target`."""
    u = np.full(len(obj.optimum), 1 / len(obj.optimum))
    lo, hi = 0.0, 1.0
    for _ in range(60):
        t = (lo + hi) / 2
        lo, hi = (t, hi) if obj.value((1 - t) * obj.optimum + t * u) > target else (lo, t)
    return (1 - lo) * obj.optimum + lo * u


def _play(obj, mixtures: dict[str, np.ndarray], prior, seeds: int, trial: int, noise_z: float, prefer=None) -> dict:
    entries = [
        {
            "name": name,
            "kl_prior": float(playoff.kl_to_prior(w, prior)[0]),
            "scores": [obj(w, 1000 * trial + s) for s in range(seeds)],
        }
        for name, w in mixtures.items()
    ]
    return playoff.decide(entries, noise_z, prefer)


def test_the_playoff_picks_the_truly_better_finalist_above_the_noise_and_ties_below_it():
    """A known optimum and a known seed noise (sd 0.02): finalists 'far' (10 sd below the
    optimum), 'near' (0.05 sd below) and the optimum itself, 4 seeds each, 60 playoffs."""
    sd = 0.02
    obj = SyntheticObjective(np.array([0.4, 0.3, 0.2, 0.1]), scale=10.0, noise=sd)
    prior = np.array([0.1, 0.2, 0.3, 0.4])
    far, near = _at_value(obj, -10 * sd), _at_value(obj, -0.05 * sd)
    # the clear case holds whichever finalist the search itself chose
    assert _play(obj, {"optimum": obj.optimum, "far": far}, prior, 4, 0, 2.0, prefer="far")["winner"] == "optimum"
    assert obj.value(far) == pytest.approx(-10 * sd) and obj.value(near) == pytest.approx(-0.05 * sd)
    assert playoff.kl_to_prior(near, prior)[0] < playoff.kl_to_prior(obj.optimum, prior)[0]
    wins, ties, estimates = 0, 0, []
    for trial in range(60):
        clear = _play(obj, {"optimum": obj.optimum, "far": far}, prior, 4, trial, noise_z=2.0)
        wins += clear["winner"] == "optimum" and clear["tied"] == ["optimum"]
        close = _play(obj, {"optimum": obj.optimum, "near": near}, prior, 4, trial, noise_z=2.0)
        ties += sorted(close["tied"]) == ["near", "optimum"]
        if len(close["tied"]) == 2:
            assert close["winner"] == "near"  # a tie goes to the more prior-like finalist
            assert "within the noise" in close["reason"] and "most prior-like" in close["reason"]
            kept = _play(obj, {"optimum": obj.optimum, "near": near}, prior, 4, trial, 2.0, prefer="optimum")
            assert kept["winner"] == "optimum" and "the search's own choice" in kept["reason"]
        estimates.append(close["sd"])
    assert wins == 60  # a gap of 10 sd is always ranked
    # a gap of 0.05 sd: |difference| / its standard error ~ t with 6 df, within 2 with p = 0.91
    assert ties >= 48
    assert np.mean(estimates) == pytest.approx(sd, rel=0.15)  # the pooled estimate of the known noise


def test_without_two_runs_of_any_finalist_every_difference_counts():
    out = playoff.decide(
        [{"name": "a", "kl_prior": 0.5, "scores": [1.0]}, {"name": "b", "kl_prior": 0.1, "scores": [0.999]}], 1.0
    )
    assert out["winner"] == "a" and out["tied"] == ["a"] and out["sd"] is None
    assert "no seed-noise estimate" in out["reason"]
    none = playoff.decide([{"name": "a", "kl_prior": 0.0, "scores": []}], 1.0)
    assert none["winner"] is None and "no finalist" in none["reason"]


@pytest.mark.parametrize("sd", [0.0, 0.3, 1.0])
def test_the_rank_ceiling_is_how_well_the_noise_free_scores_rank_single_runs(sd):
    """Signal sd 1: no noise, a ceiling of 1; as much noise as signal, ~0.7 (Spearman runs a little below
    the correlation it is computed from: within 0.03 up to there); noise alone, 0."""
    rng = np.random.default_rng(0)
    true = rng.normal(size=4000)
    observed = true + rng.normal(scale=sd, size=len(true))
    ceiling = noise.rank_ceiling(float(np.var(observed, ddof=1)), sd)
    assert ceiling == pytest.approx(playoff.pred.spearman(true, observed), abs=0.03)
    assert noise.rank_ceiling(sd**2, sd) == 0.0 and noise.rank_ceiling(sd**2 / 2, sd) == 0.0


# ----------------------------------------------------------------------------------- budget
@pytest.mark.parametrize("preset", ["cpu-tiny", "cpu-2m"])
def test_parameter_count_matches_the_model_the_proxy_trains(preset):
    from mixture.config import ProxyConfig
    from mixture.search.proxy import build_model, count_params

    pcfg = ProxyConfig(preset=preset, seq_len=64)
    assert playoff.gpt2_params(pcfg, 400) == count_params(build_model(pcfg, 400, 0))


def test_the_budget_counts_transfer_runs_by_tokens_times_parameters_and_refuses_more():
    base = dict(iterations=[12, 6, 4], proxy=dict(preset="cpu-2m", tokens=300_000))
    playing = dict(enabled=True, finalists=["predicted", "best_observed"], seeds=2, anchor_seeds=1)
    # by default a finalist trains the proxy's model on twice its tokens: two proxy runs each
    twice = SearchConfig(**base, playoff={**playing, "budget_share": 0.5})
    assert twice.finalist_proxy.tokens == 600_000 and twice.finalist_proxy.preset == "cpu-2m"
    b = playoff.check_budget(twice, 4096)
    assert b["transfer_run_cost"] == pytest.approx(2.0) and b["cost"] == pytest.approx(1 + 4 * 2.0)
    with pytest.raises(playoff.PlayoffError, match="lower search.playoff.tokens_factor"):
        playoff.check_budget(twice.model_copy(update={"iterations": [12, 4]}), 4096)  # 9 > half of 16
    ok = SearchConfig(
        **base,
        transfer_proxy=dict(preset="cpu-2m", tokens=150_000),  # half a proxy run each
        playoff={**playing, "tokens_factor": None},  # the finalists train with the transfer proxy
    )
    b = playoff.check_budget(ok, 4096)
    assert b["transfer_run_cost"] == pytest.approx(0.5) and b["transfer_runs"] == 4
    assert b["anchor_runs"] == 1 and b["cost"] == pytest.approx(3.0) and b["limit"] == pytest.approx(5.5)
    bigger = ok.model_copy(update={"transfer_proxy": ok.transfer_proxy.model_copy(update={"preset": "cpu-6m"})})
    with pytest.raises(playoff.PlayoffError, match=r"more than search.playoff.budget_share 0.25 of the search's 22"):
        playoff.check_budget(bigger, 4096)
    # 6 layers x 256 wide have ~6.1x the parameters of 2 x 128 (4,096 tokens of vocabulary); half the tokens
    assert 3.0 < playoff.budget(bigger, 4096)["transfer_run_cost"] < 3.2


# ---------------------------------------------------------------------- the stage with a playoff
@pytest.fixture(scope="module")
def climblab_texts(sample_records):
    by_source = defaultdict(list)
    for r in sample_records:
        by_source[r["source"]].append(r["text"][:3000])
    return {name: by_source[s][:8] for name, s in zip(NAMES, sorted(by_source)[:4])}


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def _config(tmp_path, climblab_texts, tracking_uri, run_name, target=TARGET, search=None):
    root = tmp_path / "out"
    if not (root / "climblab" / "_manifest.json").exists():
        make_climblab(str(root / "climblab"), climblab_texts, vocab_size=400)
    tiny = {"preset": "cpu-tiny", "tokens": 4096, "batch_size": 4, "seq_len": 64}
    base = {
        "iterations": [6, 3],
        "candidates": 2000,
        "top_n": 6,
        "top_k": 4,
        "proxy": tiny,
        "transfer_proxy": {**tiny, "tokens": 2048},
        "target": {"val_uris": [str(target)], "val_docs": 6, "val_tokens": 3000},
        "predictor": {"cv_folds": 3, "min_child_samples": 2, "min_data_in_bin": 1},
        "playoff": {"enabled": True, "anchor_seeds": 2, "budget_share": 0.9, "tokens_factor": None},
        **(search or {}),
    }
    return parse_config(
        {
            "run_name": run_name,
            "output_root": str(root),
            "input": {"uris": ["unused"]},
            "search": base,
            "tracking": {"experiment": "test", "uri": tracking_uri},
        }
    )


class Counting:
    def __init__(self):
        self.calls = []
        self.objective = SyntheticObjective(np.array([0.1, 0.2, 0.3, 0.4]), noise=0.02, names=NAMES)

    def __call__(self, mixture, seed):
        self.calls.append((tuple(sorted(mixture.items())), seed))
        return self.objective.proxy(mixture, seed)


def test_a_search_with_a_playoff_commits_the_winner_records_it_and_resumes(tmp_path, climblab_texts, tracking_uri):
    cfg = _config(tmp_path, climblab_texts, tracking_uri, "playoff")
    obj = Counting()
    ctx = pipeline.open_stage(cfg, "search")
    for i in range(2):
        for job in steps.propose(ctx, i):
            steps.run_proxy(ctx, job, objective=obj)
    jobs = steps.propose_playoff(ctx)
    assert steps.propose_playoff(ctx) == jobs  # written once
    anchors = [j for j in jobs if j.get("anchor")]
    finals = [j for j in jobs if j.get("finalist")]
    # natural x2, the best observed x1 more (its search run is its first seed); 2 seeds per finalist
    assert [j["anchor"] for j in anchors] == ["natural", "natural", "best_observed"]
    assert {j["proxy_section"] for j in anchors} == {"proxy"} and {j["proxy_section"] for j in finals} == {"playoff"}
    assert len(finals) == 2 * len({j["finalist"] for j in finals}) >= 4
    for job in jobs[:3]:  # some finish, then the search is "killed"
        steps.run_proxy(ctx, job, objective=obj)
    with pytest.raises(steps.SearchError, match="playoff runs are not finished"):
        steps.finish(ctx)

    trained = len(obj.calls)
    out = stage.run(pipeline.open_stage(cfg, "search"), objective=obj)
    assert len(obj.calls) - trained == len(jobs) - 3  # the finished playoff runs were reused
    assert out.extra["reused_runs"] == 9 + 3 and out.counts["playoff_runs"] == len(jobs)
    ds = ctx.writer.commit(out.counts, out.extra)

    mix = storage.read_json(ds.path("mixture.json"))
    rec = mix["playoff"]
    assert mix["method"] == "playoff" and mix["reason"].startswith("playoff: ")
    win = next(f for f in rec["finalists"] if f["name"] == rec["winner"])
    assert mix["weights"] == win["weights"] and rec["winner"] in rec["tied"]
    assert mix["search_choice"]["method"] in {"best_fitted", "best_observed"}  # final: best_fitted, or its fallback
    assert rec["proxy"] == cfg.search.transfer_proxy.model_dump(mode="json")  # tokens_factor null
    for f in rec["finalists"]:
        assert len(f["seed_scores"]) == 2 and f["seeds"] == [cfg.seed, cfg.seed + 1]
        assert f["mean"] == pytest.approx(np.mean(f["seed_scores"]))
        assert f["metrics"]["synthetic.distance"] == pytest.approx(-f["mean"])
    assert max(rec["finalists"], key=lambda f: f["mean"])["name"] in rec["tied"]
    noise = rec["noise"]
    assert noise["transfer"]["sd"] > 0 and noise["transfer"]["df"] == len(rec["finalists"])
    assert noise["proxy"]["df"] == 2 and set(noise["proxy"]["anchors"]) == {"natural", "best_observed"}
    assert len(noise["proxy"]["anchors"]["best_observed"]["scores"]) == 2
    assert rec["budget"]["cost"] <= rec["budget"]["limit"]
    summary = dict(out.summary)
    assert "proxy-scale seed sd" in summary["seed noise"] and f"{rec['winner']} wins" in summary["playoff"]
    assert 0 <= noise["proxy"]["rank_ceiling"] <= 1 and "tops out near" in summary["seed noise"]

    mlflow.set_tracking_uri(tracking_uri)
    df = mlflow.search_runs(experiment_names=["test-playoff-search"])
    runs = df[df["tags.climb.kind"] == "playoff"]
    assert sorted(runs["tags.mlflow.runName"]) == sorted(
        f"playoff: {f['name']}: {track.mixture_label(f['weights'])}" for f in rec["finalists"]
    )
    for c in NAMES:
        assert runs[f"params.w.{c}"].notna().all()  # comparable side by side
    assert runs["metrics.score"].notna().all() and runs["metrics.won"].sum() == 1
    parent = df[df["tags.climb.kind"] == "search"]
    assert parent["run_id"].iloc[0] == runs["tags.mlflow.parentRunId"].iloc[0]
    assert len(df[df["tags.climb.kind"] == "proxy"]) == 9  # the playoff's runs are not search proxies


def test_a_playoff_over_budget_is_refused_before_any_proxy_trains(tmp_path, climblab_texts, tracking_uri):
    cfg = _config(tmp_path, climblab_texts, tracking_uri, "over", search={"playoff": {"enabled": True}})
    ctx = pipeline.open_stage(cfg, "search")
    with pytest.raises(playoff.PlayoffError, match="would cost"):
        steps.propose(ctx, 0)
    assert steps.read_proposals(ctx.writer, 0) is None
    off = _config(tmp_path, climblab_texts, tracking_uri, "off", search={"playoff": {"enabled": False}})
    assert len(steps.propose(pipeline.open_stage(off, "search"), 0)) == 6
    assert steps.propose_playoff(pipeline.open_stage(off, "search")) == []


# ------------------------------------------------------------------------------- report part
def _poisoned(tmp_path, share: float) -> Path:
    """The target with every document of its report part replaced by unrelated text."""
    from mixture.search.evaluate import in_report

    with gzip.open(TARGET, "rt") as f:
        docs = [json.loads(line) for line in f]
    assert all(isinstance(d.get("id"), str) for d in docs)
    hit = 0
    for d in docs:
        if in_report(f"id:{d['id']}", share):
            d["text"] = "zzq xxv qqz " * 200
            hit += 1
    assert 0 < hit < len(docs)
    path = tmp_path / "poisoned.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    return path


def test_poisoning_the_report_part_leaves_the_searchs_scores_unchanged(tmp_path, climblab_texts, tracking_uri):
    """Real (tiny) proxies: a search job scored on the intact and on the poisoned target gets the
    same score; a report-part run sees the poison."""
    off = {"playoff": {"enabled": False}}
    split = {**off, "target": {"val_uris": [str(TARGET)], "val_docs": 40, "val_tokens": 4000, "report_share": 0.5}}
    clean = _config(tmp_path, climblab_texts, tracking_uri, "clean", search=split)
    bad_split = {**split, "target": {**split["target"], "val_uris": [str(_poisoned(tmp_path, 0.5))]}}
    bad = _config(tmp_path, climblab_texts, tracking_uri, "bad", search=bad_split)
    job = steps.propose(pipeline.open_stage(clean, "search"), 0)[0]
    a = steps.run_proxy(pipeline.open_stage(clean, "search"), job)
    b = steps.run_proxy(pipeline.open_stage(bad, "search"), job)
    assert a["score"] == b["score"] and a["metrics"] == b["metrics"]
    report = {**job, "run_id": job["run_id"] + "-report", "target_split": "report"}
    ra = steps.run_proxy(pipeline.open_stage(clean, "search"), report)
    rb = steps.run_proxy(pipeline.open_stage(bad, "search"), report)
    assert ra["score"] != a["score"] and rb["score"] != ra["score"]
