"""Proxies continued from a shared base: one base proxy trained once, every proxy run continues it.

CLIMB (Diao et al., 2025) trains its proxies by continuing a pretrained model on each candidate
mixture. Here (`search.base`): one base proxy of `search.proxy` is trained on the natural mixture
(the clusters' token shares) with the search's seed for a share `search.base.share` of the proxy's
steps; each proxy run of the search starts from its weights *and* AdamW state at that step and
trains the rest of the steps on its own mixture. A run's first steps are then the same for every
mixture, and so is their noise: what separates two runs is the data of the steps after the base.

The learning-rate schedule of base + run is one schedule, with no warm restart:
- `stable_decay` (default): warm-up, then the peak rate until the decay of the last 20% of the
  whole run (WSD), the decay never starting inside the base. The base ends at the peak rate like a
  checkpoint of WSD's stable phase, and each run decays on its own mixture: a continued run gets
  the same rates as a run from scratch would at those steps, and the decay, whose data is known to
  weigh most in the final loss (MiniCPM's WSD; annealing-data ablations), is always the mixture's.
  A warm restart (warm-up again from a low rate) was not taken: its loss spike is the same for every
  mixture and only spends steps.
- `split`: `search.proxy.schedule` over the whole run, cut where the base ends (with a cosine
  schedule the run starts at a lower rate than the peak).

With `search.proxy.data_order: cluster`, a continued run's window streams go on where the base's
ended (`proxy.Segment.skip`), so a run repeats no window of the base.

Files, in the search's staging folder (committed with the search): `base/base.pt` (torch.save of
{"model", "optimizer"} state dicts, on the CPU) and `base/base.json` (what it is: mixture, seed,
steps, windows per cluster, the file's sha256, its score on the target), each written atomically,
the JSON last: a second `ensure` returns the stored base without training. A proxy job names the
base by {"uri", "path", "sha256"}; its run record keeps that, so it says which base it continued
from (the baselines' proxy-scale runs continue from the committed search's base).
"""

from __future__ import annotations

import hashlib
import io
import logging
from datetime import UTC, datetime

from mixture import storage
from mixture.config import Config, ProxyConfig
from mixture.config.search import BaseConfig, SearchConfig
from mixture.search import proxy

log = logging.getLogger(__name__)

BASE_JSON = "base/base.json"
BASE_STATE = "base/base.pt"


class BaseError(RuntimeError):
    """A base proxy that cannot be trained, found or trusted."""


def split(pcfg: ProxyConfig, bcfg: BaseConfig) -> tuple[int, int]:
    """(the steps of a whole proxy run, the steps the base trains of them)."""
    total = max(1, pcfg.tokens // (pcfg.batch_size * pcfg.seq_len))
    if total < 2:
        raise BaseError(f"search.proxy trains {total} step: a base needs 2 or more (the base's and the run's)")
    return total, min(total - 1, max(1, round(bcfg.share * total)))


def _schedule(bcfg: BaseConfig, base_steps: int) -> tuple[str | None, int]:
    return ("wsd", base_steps) if bcfg.schedule == "stable_decay" else (None, 0)


def base_segment(scfg: SearchConfig) -> proxy.Segment:
    total, n = split(scfg.proxy, scfg.base)
    return proxy.Segment(0, n, total, *_schedule(scfg.base, n))


def continued(scfg: SearchConfig, record: dict, state: dict, steps: int | None = None) -> proxy.Segment:
    """The segment of a run continued from the base `record`/`state`: the rest of a proxy run's
    steps, or `steps` after the base (merged experts)."""
    total, n = split(scfg.proxy, scfg.base)
    if record["steps"] != n:
        raise BaseError(f"the base trained {record['steps']} steps, search.base now gives it {n}: train it again")
    run_steps = total - n if steps is None else steps
    skip = record["windows"] if scfg.proxy.data_order != "run" else None
    return proxy.Segment(n, run_steps, n + run_steps, *_schedule(scfg.base, n), state=state, skip=skip)


def state_bytes(model, opt=None) -> bytes:
    """torch.save of the model's (and the optimizer's) state, moved to the CPU."""
    import torch

    buf = io.BytesIO()
    state = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if opt is not None:
        state["optimizer"] = opt.state_dict()
    torch.save(state, buf)
    return buf.getvalue()


def read_state(uri: str, sha256: str) -> dict:
    """A saved state, checked against the sha256 that names it."""
    import torch

    data = storage.read_bytes(uri)
    have = hashlib.sha256(data).hexdigest()
    if have != sha256:
        raise BaseError(f"{uri} has sha256 {have[:12]}, the job names {sha256[:12]}: it was replaced")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def load(ref: dict) -> tuple[dict, dict]:
    """(the base's record, its state) for a job's base reference {"uri", "sha256"}."""
    uri = ref["uri"]
    json_uri = uri.removesuffix(".pt") + ".json"
    if not storage.exists(json_uri):
        raise BaseError(f"no base proxy at {json_uri}: run the search's base step first")
    return storage.read_json(json_uri), read_state(uri, ref["sha256"])


def ref(root: str) -> dict:
    """What a proxy job carries to continue from the base staged or committed under `root` (the
    search's staging folder or dataset): {"uri", "path" (in the search's dataset), "sha256"}."""
    json_uri = storage.join(root, BASE_JSON)
    if not storage.exists(json_uri):
        raise BaseError(f"search.base is enabled but {root} holds no base proxy: run the base step (steps.base) first")
    return {"uri": storage.join(root, BASE_STATE), "path": BASE_STATE, "sha256": storage.read_json(json_uri)["sha256"]}


def with_base(cfg: Config, search_uri: str, jobs: list[dict]) -> list[dict]:
    """`jobs` at proxy scale continued from the base of the committed search at `search_uri` when
    `search.base` is on (the baselines' runs then train as the search's did)."""
    if not cfg.search.base.enabled:
        return jobs
    base_ref = ref(search_uri)
    return [{**j, "base": base_ref} if j.get("proxy_section", "proxy") == "proxy" else j for j in jobs]


def _same(record: dict, cfg: Config) -> bool:
    scfg = cfg.search
    return (
        record.get("seed") == cfg.seed
        and record.get("proxy") == scfg.proxy.model_dump(mode="json")
        and record.get("base") == scfg.base.model_dump(mode="json")
    )


def ensure(cfg: Config, writer, lab, mixture: dict[str, float], device: str | None = None) -> dict:
    """The base proxy's record: the staged one, or a base trained now on `mixture` (the natural
    one) with the search's seed and staged (state first, the JSON last)."""
    if writer.has(BASE_JSON):
        record = storage.read_json(writer.path(BASE_JSON))
        if not _same(record, cfg):
            raise BaseError(f"{writer.path(BASE_JSON)} holds a base of another seed or proxy configuration")
        return record
    scfg = cfg.search
    segment = base_segment(scfg)
    log.info("search: training the base proxy (%d of %d steps, natural mixture)", segment.steps, segment.total)
    result, res = proxy.train_and_evaluate(cfg, lab, mixture, cfg.seed, scfg.proxy, device, segment)
    data = state_bytes(res.model, res.optimizer)
    storage.write_bytes(writer.path(BASE_STATE), data)
    record = {
        "kind": "base",
        "mixture": mixture,
        "seed": cfg.seed,
        "proxy": scfg.proxy.model_dump(mode="json"),
        "base": scfg.base.model_dump(mode="json"),
        "steps": segment.steps,
        "of_steps": segment.total,
        "windows": res.windows,
        "state": BASE_STATE,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        **result,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    storage.write_json(writer.path(BASE_JSON), record)
    log.info("search: base proxy staged (score %.4f, sha256 %s)", record["score"], record["sha256"][:12])
    return record
