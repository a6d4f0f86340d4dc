"""Which attack trials a finished run gets: attack names, budgets, the source trials and the references (the
robustness ladder is described in :mod:`unlearnbench.robustness`)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from unlearnbench.config import AttackSpec, ConfigError, SweepPlan, parse_seeds
from unlearnbench.results import REFERENCE_EVAL  # not an attack: the retrained network scored by task.evaluate
from unlearnbench.robustness.attacks import ATTACKS
from unlearnbench.robustness.references import REFERENCES, has_retrained, retrained_net
from unlearnbench.settings import MAX_BUDGET, MAX_RUNGS, read_small_file
from unlearnbench.tasks import TASKS

_COMMON = {"batch_size": 64, "n_samples": 64, "sample_seed": 777, "mia_n_t": 64, "mia_heldout": 256,
           "bootstrap": 1000}  # with each task's attack_settings (its learning rates): one optimiser for every model
ATTACK_DIR = "attack"


def ordered_attacks() -> list[str]:
    """Every registered attack, in the order the ladder runs them (each attack's ``order``, then its name)."""
    return sorted(ATTACKS.names(), key=lambda a: (ATTACKS.get(a).order, a))


def parse_attacks(value: str | None, task_name: str, kind: str) -> list[str]:
    """``None``: the kind's defaults; ``all``: every attack that applies; ``none``: no attack (only the retrained
    reference's evaluation, the anchor of the comparison protocol); else a comma list, checked."""
    every = ordered_attacks()
    fits = [a for a in every if kind in ATTACKS.get(a).kinds]
    if value is None:
        return [a for a in fits if kind in ATTACKS.get(a).default_for]
    if value.strip() == "all":
        return fits
    if value.strip() == "none":
        return []
    names = [a.strip() for a in value.split(",") if a.strip()]
    if not names:
        raise ConfigError(f"--attacks {value!r}: no attack given; valid: {', '.join(sorted(every))}")
    for a in names:
        if a not in every:
            raise ConfigError(f"unknown attack {a!r}; valid: {', '.join(sorted(every))}")
        if kind not in ATTACKS.get(a).kinds:
            raise ConfigError(f"attack {a!r} does not apply to {kind} task {task_name} (it needs a "
                              f"{'/'.join(ATTACKS.get(a).kinds)} task); attacks for it: {', '.join(fits)}")
    return list(dict.fromkeys(names))


def parse_budgets(values: list[str] | None, attacks: list[str]) -> dict[str, list[int]]:
    """``--budgets 0,10,50`` (every ladder attack) or ``--budgets relearn=0,10,50`` (one attack); repeatable."""
    out = {a: list(ATTACKS.get(a).ladder) for a in attacks}
    for item in values or []:
        name, _, spec = item.rpartition("=")
        targets = [a for a in attacks if ATTACKS.get(a).climbs] if not name else [name]
        if name and name not in attacks:
            raise ConfigError(f"--budgets {item!r}: {name!r} is not among the attacks run ({', '.join(attacks)})")
        if name and not ATTACKS.get(name).climbs:
            raise ConfigError(f"--budgets {item!r}: {name} has no budget ladder")
        try:
            ladder = sorted({int(v) for v in spec.split(",") if v.strip()})
        except ValueError:
            raise ConfigError(f"--budgets {item!r}: expected comma-separated whole numbers >= 0, e.g. 0,10,50,200 "
                              f"(or ATTACK=0,10,50)") from None
        if not ladder or ladder[0] < 0:
            raise ConfigError(f"--budgets {item!r}: expected whole numbers >= 0, e.g. 0,10,50,200")
        if ladder[-1] > MAX_BUDGET or len(ladder) > MAX_RUNGS:
            raise ConfigError(f"--budgets {item[:60]!r}: at most {MAX_RUNGS} budgets, each at most {MAX_BUDGET} "
                              f"optimizer steps")
        for a in targets:
            out[a] = ladder
    return out


def source_trials(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(ok trials with saved weights, every latest trial) of a run directory; attack records are not trials."""
    from unlearnbench.records import RECORDS, artifact_path, iter_latest, read_records

    path = run_dir / RECORDS
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {RECORDS}; give a run directory made by `unlearnbench run --save-models`")
    trials = sorted((r for r in iter_latest(read_records([path])) if not r.get("attack")), key=lambda r: r["trial_id"])
    saved = []
    for r in trials:
        model = artifact_path(r, "model") if r.get("status") == "ok" else None  # only inside the run folder
        if model is not None:
            saved.append({**r, "_model": str(model)})
    return saved, trials


def select_trials(saved: list[dict], trials: list[dict], seeds: str | None, methods: str | None):
    """Keep the trials of the given seeds / methods (``--seeds 0``: the ladder on one seed's models); a value the run
    does not have is an error naming the ones it has."""
    if seeds is not None:
        want = parse_seeds(seeds)
        have = sorted({r["seed"] for r in trials})
        missing = [s for s in want if s not in have]
        if missing:
            raise ConfigError(f"--seeds {seeds}: the run has no trial of seed {missing[0]}; "
                              f"its seeds: {', '.join(map(str, have))}")
        saved, trials = [r for r in saved if r["seed"] in want], [r for r in trials if r["seed"] in want]
    if methods is not None:
        want = [m.strip() for m in methods.split(",") if m.strip()]
        have = sorted({r["method"] for r in trials})
        missing = [m for m in want if m not in have]
        if not want:
            raise ConfigError(f"--methods {methods!r}: no method given; the run's methods: {', '.join(have)}")
        if missing:
            raise ConfigError(f"--methods {methods!r}: the run has no trial of method {missing[0]!r}; "
                              f"its methods: {', '.join(have)}")
        saved, trials = [r for r in saved if r["method"] in want], [r for r in trials if r["method"] in want]
    return saved, trials


def plan_attacks(run_dir: str | os.PathLike, attacks: str | None = None, budgets: list[str] | None = None,
                 cache_dir: str | None = None, threads: int = 1, seeds: str | None = None,
                 methods: str | None = None) -> SweepPlan:
    """The attack trials for a finished run (only the trials of ``seeds`` / ``methods`` when given, comma-separated);
    every name and budget checked first (``ConfigError``)."""
    run = Path(run_dir).resolve()
    if not run.is_dir():
        raise ConfigError(f"RUN_DIR {run_dir}: no such directory")
    saved, trials = select_trials(*source_trials(run), seeds, methods)
    names = sorted({r["task"]["name"] for r in trials})
    if len(names) != 1:
        raise ConfigError(f"{run}: expected the trials of one task, found {', '.join(names) or 'none'}")
    task_name = names[0]
    task_cls = TASKS.get(task_name)
    if task_cls.attack_measure is None:
        raise ConfigError(f"task {task_name}: the robustness ladder needs a task with a concept measure (a task class "
                          f"that sets attack_measure and robustness_measure), such as gmm-concept, gmm-data, "
                          f"digits-concept, digits-data")
    kind = task_cls.kind
    chosen = parse_attacks(attacks, task_name, kind)
    ladders = parse_budgets(budgets, chosen)
    if chosen and not saved:
        raise ConfigError(f"{run}: no ok trial saved its weights ({len(trials)} trial(s)); "
                          f"rerun with `unlearnbench run --save-models`")
    ok = [r for r in trials if r.get("status") == "ok"]
    if not ok:
        raise ConfigError(f"{run}: no ok trial ({len(trials)} trial(s)) to take the task's settings and seeds from")
    first = (saved or ok)[0]  # --attacks none scores only the retrained reference: no saved weights needed
    if cache_dir is None:
        try:
            cache_dir = json.loads(read_small_file(run / "args.json", "args.json")).get("cache_dir")
        except (ValueError, AttributeError):  # ConfigError is a ValueError
            cache_dir = None
    task = TASKS.get(task_name)(first["task"].get("options") or {}, cache_dir=cache_dir)
    out = run / ATTACK_DIR
    plan = SweepPlan(run_id=f"{run.name}-attack", run_dir=str(out), task=task_name,
                     task_options=first["task"].get("options") or {})
    refs = [r for r in REFERENCES if r == "pretrained" or has_retrained(task)]
    seeds = sorted({r["seed"] for r in (saved if chosen else ok)}, key=str)
    for a in chosen:
        tag = f"{a}-{'_'.join(map(str, ladders[a]))}"
        settings = {**_COMMON, **task_cls.attack_settings}
        sources = [(r["trial_id"], r, None) for r in saved] + [(f"{ref}-s{s}", None, (ref, s)) for ref in refs
                                                               for s in seeds]
        for sid, rec, ref in sources:
            model = rec["_model"] if rec is not None else None
            tid = f"{tag}--{sid}"
            plan.trials.append(AttackSpec(
                run_id=plan.run_id, trial_id=tid, task=task_name,
                task_options=(rec or saved[0])["task"].get("options") or {},
                method=rec["method"] if rec else ref[0],
                method_config=rec.get("method_config", {}) if rec else {},
                grid=rec.get("grid") if rec else None, seed=rec["seed"] if rec else ref[1],
                cache_dir=task.cache_dir, threads=threads, run_dir=str(out), artifact_dir=None,
                attack={"name": a, "budgets": ladders[a], "measure": task_cls.attack_measure, "settings": settings,
                        "source_trial": sid if rec else None, "reference": ref[0] if ref else None, "model": model}))
    if "retrained" in refs:  # the retrained network through the task's own evaluation: a reference row per metric
        for s in seeds:
            plan.trials.append(AttackSpec(
                run_id=plan.run_id, trial_id=f"{REFERENCE_EVAL}--retrained-s{s}", task=task_name,
                task_options=first["task"].get("options") or {}, method="retrained", method_config={}, grid=None,
                seed=s, cache_dir=task.cache_dir, threads=threads, run_dir=str(out), artifact_dir=None,
                attack={"name": REFERENCE_EVAL, "budgets": [], "measure": task_cls.attack_measure, "settings": {},
                        "source_trial": None, "reference": "retrained", "model": None}))
    return plan


def prepare(plan: SweepPlan) -> None:
    """In the driver, before any trial: the retrained references the plan needs (built once, cached)."""
    if any((t.get("attack") or {}).get("reference") == "retrained" for t in plan.trials):
        t0 = plan.trials[0]
        retrained_net(TASKS.get(plan.task)(t0["task_options"], cache_dir=t0.get("cache_dir")))


