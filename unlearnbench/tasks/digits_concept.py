"""``digits-concept`` (kind "concept"): erase digit prompts from the conditional model. Methods regress the null
prompt and each erased prompt onto an erased target (``c_from`` = null). Forget sets: ``one`` (digit 3) and
``pair`` (digits 0 and 9, of different difficulty: the point-wise KL estimate KL(q(.|null) || q(.|digit)), the rkl
constraint value of "erase to the null prompt", is ~29 nats for 0, ~16 for 9 and ~18 for 3). ``ref_sampler`` draws
from a cached pool of pretrained samples per prompt (256 each); ``posterior`` is a diffusion-classifier estimate of
P(c | x_t) (:class:`DiffusionPosterior`). Metrics: classifier accuracy on guided samples of the erased prompts
(unlearning; erasing to the null prompt gives ~0.11, the share of each digit among null-prompt samples) and of the
kept prompts, KID of kept-prompt samples to the pretrained model's own samples (classifier features) and the
point-wise KL proxy between the unlearned and the pretrained model on kept prompts (retention).
The shared machinery (data, networks, pools, KL proxy) is :mod:`unlearnbench.tasks._digits`.
"""
from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

from unlearnbench.cache import cached_torch
from unlearnbench.models import NULL_PROMPT, UNET_DEFAULTS, digit_prompt, n_params, prompt_digit
from unlearnbench.tasks._digits import (SAMPLE_STEPS, _DigitsTask, _mean_metric, _save_grid, features, kl_proxy,
                                        load_pool, sample_prompts)
from unlearnbench.tasks.base import (SETTLING, DiffusionPosterior, MetricValue, ModelBundle, PoolSampler,
                                     add_pretrained)

CONCEPT_FORGET = {"one": (3,), "pair": (0, 9)}  # digits


class DigitsConceptTask(_DigitsTask):
    """Erase digit prompts from a class-conditional UNet on 8x8 digits (see the module docstring)."""

    name = "digits-concept"
    kind = "concept"
    learned_prompts = True  # a prompt is n_tokens learned tokens, all carrying the digit; the digit's ink is its mask
    forget_sets = {k: [digit_prompt(d) for d in v] for k, v in CONCEPT_FORGET.items()}
    axes = [("acc_forget", "acc_kept"), ("acc_forget", "kid_kept")]
    emits = {"acc_forget": ("unlearning", False, "classifier accuracy on samples of the erased prompts"),
             "acc_kept": ("retention", True, "classifier accuracy on samples of the kept prompts"),
             "acc_forget_d{i}": ("info", False, "classifier accuracy on samples of erased digit i"),
             "acc_forget_d{i}_pretrained": ("info", False, "the same for the pretrained model"),
             "kid_kept": ("retention", False, "KID (classifier features) of kept-prompt samples to pretrained ones"),
             "kl_proxy_kept": ("retention", False, "ELBO-gap proxy of KL(p_theta || q) on kept prompts (nats)")}
    _rkl = [15.0, 20.0, 25.0, 35.0, 50.0, 70.0]
    _lik = [0.04, 0.02, 0.01, 0.005, 0.002, 0.0005]
    # lik-is cannot push the erased digit's posterior mass much under 0.01 here: at eps = 0.0005 its duals settle
    # (12-17) and its final estimates end at 0.011-0.016 on seeds 0-2, at eps = 0.01 at 0.017-0.021; a threshold
    # under its reach is not on its grid (issue 20, item 6)
    _lik_is = [v for v in _lik if v >= 0.01]
    grids = {
        "eps": {"rkl": _rkl, "rkl-is": _rkl, "lik": _lik, "lik-is": _lik_is,
                "rkl-fixed": [0.05, 0.1, 0.2, 0.35, 0.6, 1.0], "esd": [0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
                "salun": [8.0, 4.0, 2.0, 1.0, 0.5, 0.25],
                # issue 23: uce sweeps erase_scale; ca, fmn and mace sweep steps (their references' strength knob)
                "uce": [0.1, 0.3, 1.0, 3.0, 10.0, 30.0], "ca": [25.0, 50.0, 100.0, 150.0, 250.0, 400.0],
                "fmn": [25.0, 50.0, 75.0, 100.0, 150.0, 300.0], "mace": [10.0, 25.0, 50.0, 100.0, 200.0, 400.0]},
        "smoke": {"rkl": [20.0, 50.0], "rkl-is": [20.0, 50.0], "lik": [0.02, 0.002], "lik-is": [0.02, 0.01],
                  "rkl-fixed": [0.1, 0.6], "esd": [0.5, 4.0], "salun": [4.0, 0.5],
                  "uce": [0.3, 3.0], "ca": [50.0, 150.0], "fmn": [50.0, 150.0], "mace": [25.0, 100.0]},
    }
    default_steps = 150
    default_options = {"n_eval": 200, "n_eval_kept": 32}
    # fitted to the trial budget (~1 min on one core): small batches and constraint estimates; lr 5e-4 (1e-3 drifts
    # the kept prompts: KL proxy ~10 nats at lr 1e-3 vs ~1-2 at 3e-4 for the same erasure). ESD: ESD-x (cross-attention)
    # as the reference's default, x_t sampled along the task's 20-step DDIM schedule, 16 samples per step.
    _rkl_defaults = {"lr": 5e-4, "batch_size": 64, "n_estimate": 48, "n_t_estimate": 2, "dual_lr": 0.01,
                     "dual_warmup": 30}
    _lik_defaults = {"lr": 5e-4, "batch_size": 64, "n_estimate": 48, "dual_lr": 40.0, "dual_warmup": 30}
    # Equal tuning effort (issue 20, item 8; leaderboards/tuning/README.md, "digits-concept"): lr {1.5e-4, 5e-4,
    # 1.5e-3} x {150, 300} steps on validation seeds 100-101, the two best on 102-105, scored on acc_forget /
    # kid_kept (the primary pair ties at its ceiling). rkl, lik and rkl-fixed moved to lr 1.5e-4 / 300 steps (paired
    # bootstrap over 6 seeds: +0.0132, +0.0112, +0.0048 hypervolume over lr 5e-4 / 150); ESD kept lr 5e-4 / 150.
    # rkl-is / lik-is were not searched and keep lr 5e-4 / 150 steps.
    _tuned = {"lr": 1.5e-4, "steps": 300}
    # Duals that settle (issue 20, item 6): gmm-concept's schedule, the dual step constant for the first half and
    # then dual_lr / (1 + k/5), the "met" verdict on 8 fresh final estimates, training on until settled up to 600
    # steps. On the leaderboard's own trials (claims grid, seeds 0-4; leaderboards/tuning/README.md, "digits-concept")
    # rkl settled 25 of 30 (10 of 30 without) and lik 20 of 20 (7 of 20), with the same fronts; on theirs (3 seeds)
    # rkl-is 5 of 6 (1 of 6) and lik-is 2 of 6 (1 of 6), hypervolumes within each other's intervals.
    _settle = {**SETTLING, "max_steps": 600}
    # rkl alone ended a few per cent under b on 5 of its 30 trials with settled duals (the last iterate fluctuates
    # around the duals' equilibrium, which sat at b): its dual step aims 5 % inside b and the stop rule stops only on
    # estimates that meet b itself (the verdict keeps its tolerance). On its 8 unsettled-prone trials (b = 20, 35,
    # seeds 0, 1, 3, 4) 7 of 8 settled against 3 of 8 (leaderboards/tuning/README.md, "dual margin").
    _rkl_settle = {**_settle, "dual_margin": 0.05, "stop_strict": True}
    method_defaults = {
        "rkl": {**_rkl_defaults, **_tuned, **_rkl_settle}, "rkl-is": {**_rkl_defaults, **_settle},
        "lik": {**_lik_defaults, **_tuned, **_settle},
        "lik-is": {**_lik_defaults, **_settle},
        "rkl-fixed": {"lr": 5e-4, "batch_size": 64, **_tuned},
        "esd": {"lr": 5e-4, "batch_size": 16, "ddim_steps": SAMPLE_STEPS, "trainable": "xattn"},
        "salun": {"lr": 1e-3, "batch_size": 64},
        # issue 23: Adam at the digits scale (the SD references: lr 2e-6 to 1e-5, batch 1 to 8, 35 to 200 steps)
        "ca": {"lr": 5e-4, "batch_size": 32},
        # fmn trains the whole UNet on an attention-only loss: at lr 5e-4 35 steps collapse every prompt (seed 0:
        # acc_kept 0.12, KID 1.6); at 5e-5 35 steps change nothing (acc_forget 0.99) and 300 collapse (acc_kept 0.11)
        "fmn": {"lr": 5e-5, "batch_size": 16},
        "mace": {"lr": 1e-3, "batch_size": 16},
        # SPM / AdvUnlearn: x_t along the task's 20-step schedule as ESD; SPM's rank-1 adapters at lr 1e-2 (its
        # docstring has the measurements); AdvUnlearn's table and K/V at lr 5e-3 (5e-4 erases nothing in 60 steps,
        # 5e-3 all of digit 3 with the kept digits intact, seed 0) and its attack shortened to the trial budget (10
        # steps every 5 after 30 warm-up steps); SLD's warm-up 10 of 50 sampler steps is 4 of 20 here
        "spm": {"lr": 1e-2, "batch_size": 16, "ddim_steps": SAMPLE_STEPS},
        "advunlearn": {"lr": 5e-3, "batch_size": 16, "retain_batch": 8, "ddim_steps": SAMPLE_STEPS, "warmup": 30,
                       "attack_steps": 10, "attack_every": 5, "attack_batch": 4},
        "sld": {"warmup_steps": 4},
    }
    # accuracies and rates in [0, 1]; KID on classifier features is ~0.01 for the pretrained model, 2 is noise;
    # the KL proxy of a working model is a few nats
    sane_ranges = {"acc_*": (0.0, 1.0), "kid_*": (-0.05, 2.0), "kl_proxy_kept": (-1.0, 500.0)}
    # one point of kept-class accuracy; KID 0.005 is half the pretrained model's own KID to the data (~0.01); the KL
    # proxy in nats
    equivalence_margins = {"acc_kept": 0.01, "kid_kept": 0.005, "kl_proxy_kept": 0.25}
    pretrained_points = ("acc_forget", "acc_kept", "kid_kept", "kl_proxy_kept")
    artefacts = ("digits-unet", "digits-classifier", "digits-pool")

    reference_points = {
        # classifier accuracy on erased prompts, 1 = not erased; accuracy on kept prompts, 0.1 = chance (10 digits).
        ("acc_forget", "acc_kept"): (1.0, 0.1),
        # KID on kept prompts; 0.1 is "clearly broken" for the digits feature extractor.
        ("acc_forget", "kid_kept"): (1.0, 0.1),
    }
    attack_measure = "acc_forget"

    def robustness_measure(self, bundle: ModelBundle, net: nn.Module, prompt_ids: list[int],
                           gen: torch.Generator) -> MetricValue:
        """Classifier accuracy on ``net``'s samples of the scored prompts (the erased digits)."""
        from unlearnbench.metrics.classifier import accuracy

        n = int(self.options["n_eval"])
        cond = torch.tensor(prompt_ids).repeat_interleave(n)
        labels = torch.tensor([prompt_digit(p) for p in bundle.forget_concepts]).repeat_interleave(n)
        x = sample_prompts(net, bundle.schedule, cond, bundle.guidance, bundle.sample_steps, gen)
        _, logits = features(self._base()["classifier"], x)
        m = accuracy(logits, labels, "unlearning", False)
        return MetricValue(m.value, m.stderr, m.n, "robustness", False)

    def pretrain_report(self) -> dict[str, Any]:
        """Numbers for ``unlearnbench pretrain``: network sizes, the classifier's held-out accuracy and the guided
        samples' accuracy per digit (after :meth:`prepare`)."""
        st = self._state
        assert st is not None
        acc = st["pool"]["acc"][1:]
        return dict(unet_params=n_params(st["unet"]), classifier_params=n_params(st["classifier"]),
                    classifier_heldout_acc=st["classifier"].heldout_acc,
                    guided_sample_acc=float(acc.mean()), guided_sample_acc_per_digit=acc.tolist(),
                    guided_samples_per_digit=int(st["pool"]["samples"].shape[1]),
                    unet_pretrain=st["unet"].pretrain_info)

    def retrained(self) -> nn.Module:
        """The class-conditional UNet pretrained with the task's settings on the training split without the erased
        digits (once; cached)."""
        from unlearnbench.models import CondUNet, pretrain_unet

        st = self._base(progress=False)
        cfg = self.cfgs["unet"]
        erased = sorted(prompt_digit(p) for p in self.forget_sets[self.forget_name])
        key = {**cfg, "retrain_without_digits": erased}

        def build() -> dict:
            split = st["split"]
            keep = ~torch.isin(split["y_train"], torch.tensor(erased))
            with torch.random.fork_rng(devices=[]):
                net = pretrain_unet(cfg["train"], split["x_train"][keep], split["y_train"][keep] + 1, cfg["unet"],
                                    desc=f"retraining the {self.name} reference without digits {erased} (once; cached)")
            return {"state_dict": net.state_dict(), "train_time_s": net.train_time_s}

        obj = cached_torch(self.cache_dir, "digits-retrained", key, build)
        net = CondUNet(cfg["unet"])
        net.load_state_dict(obj["state_dict"])
        return net.requires_grad_(False)

    def prepare(self, progress: bool = True) -> None:
        st = self._base(progress)
        st["pool"] = load_pool(self.cache_dir, self.cfgs, st["unet"], st["classifier"], progress)

    def build(self, seed: int, device: torch.device | str = "cpu") -> ModelBundle:
        if self._state is None or "pool" not in self._state:
            self.prepare(progress=False)
        st = self._state
        assert st is not None
        forget = list(self.forget_sets[self.forget_name])
        kept = [p for p in range(1, UNET_DEFAULTS["n_prompts"]) if p not in forget]
        b = self._bundle(st["unet"], "concept", device, forget_concepts=forget, retain_concepts=kept,
                         concept_names={p: f"digit {prompt_digit(p)}" for p in range(1, UNET_DEFAULTS["n_prompts"])})
        b.concept_names[NULL_PROMPT] = "null prompt"
        b.ref_sampler = PoolSampler(st["pool"]["samples"], b.device)
        b.posterior = DiffusionPosterior(b.ref, b.schedule)
        b.log_ratio = lambda x0, concepts: b.posterior.log_ratio(x0, concepts)
        return b

    @torch.no_grad()
    def evaluate(self, bundle: ModelBundle, seed: int) -> dict[str, MetricValue]:
        from unlearnbench.metrics.classifier import accuracy
        from unlearnbench.metrics.kid_fid import kid

        st = self._base()
        cls, pool = st["classifier"], st["pool"]
        net, ref = bundle.net.eval(), bundle.ref
        gen = torch.Generator().manual_seed(10_000 + seed)
        nf, nk = int(self.options["n_eval"]), int(self.options["n_eval_kept"])
        forget, kept = bundle.forget_concepts, bundle.retain_concepts
        cond = torch.cat([torch.tensor(forget).repeat_interleave(nf), torch.tensor(kept).repeat_interleave(nk)])
        x = sample_prompts(net, bundle.schedule, cond, bundle.guidance, bundle.sample_steps, gen)
        f, logits = features(cls, x)
        labels = cond - 1
        isf = torch.isin(cond, torch.tensor(forget))
        out = {"acc_forget": accuracy(logits[isf], labels[isf], "unlearning", False),
               "acc_kept": accuracy(logits[~isf], labels[~isf], "retention", True)}
        for p in forget:
            m = cond == p
            a = accuracy(logits[m], labels[m], "info", False)
            out[f"acc_forget_d{prompt_digit(p)}"] = a
            out[f"acc_forget_d{prompt_digit(p)}_pretrained"] = MetricValue(float(pool["acc"][p]), None,
                                                                          int(pool["samples"].shape[1]), "info", False)
        real = pool["feats"][torch.tensor(kept)].flatten(0, 1)
        fake = f[~isf]
        out["kid_kept"] = kid(real, fake, subsets=50, subset_size=min(fake.shape[0], real.shape[0], 1000),
                              generator=torch.Generator().manual_seed(seed))
        xk, ck = x[~isf].to(bundle.device), cond[~isf].to(bundle.device)
        kl = kl_proxy(bundle.schedule, xk, net, ref, ck, n_t=4, generator=torch.Generator().manual_seed(60_000 + seed))
        out["kl_proxy_kept"] = _mean_metric(kl.cpu(), "retention", False)
        self._pretrained_point(out, forget, kept, seed)
        art = bundle.extras.get("artifact_dir")
        if art:
            bundle.extras.setdefault("artifacts", {})["samples"] = self._grid(bundle, os.path.join(art, "samples.png"))
        return out

    def _pretrained_point(self, out: dict[str, MetricValue], forget: list[int], kept: list[int], seed: int) -> None:
        """The pretrained model's values of the axis metrics, from the cached pool of its samples (no sampling):
        accuracies of the pool, KID of one half of the pool's kept-prompt features to the other, and a KL proxy
        of 0 (the pretrained model against itself)."""
        from unlearnbench.metrics.kid_fid import kid

        pool = self._base()["pool"]
        n = int(pool["samples"].shape[1])
        for name, prompts, role, hib in (("acc_forget", forget, "unlearning", False),
                                         ("acc_kept", kept, "retention", True)):
            a = float(pool["acc"][torch.tensor(prompts)].double().mean())
            add_pretrained(out, name, MetricValue(a, math.sqrt(a * (1 - a) / (n * len(prompts))), n * len(prompts),
                                                  role, hib))  # type: ignore[arg-type]
        feats = pool["feats"][torch.tensor(kept)]
        half = feats.shape[1] // 2
        real, fake = feats[:, :half].flatten(0, 1), feats[:, half:].flatten(0, 1)
        add_pretrained(out, "kid_kept", kid(real, fake, subsets=50, subset_size=min(fake.shape[0], 1000),
                                            generator=torch.Generator().manual_seed(seed)))
        add_pretrained(out, "kl_proxy_kept", MetricValue(0.0, 0.0, n * len(kept), "retention", False))

    def _grid(self, bundle: ModelBundle, path: str, per: int = 8) -> str:
        """Rows: for each erased prompt and two kept ones, pretrained then unlearned samples from the same noise."""
        prompts = list(bundle.forget_concepts) + list(bundle.retain_concepts)[:2]
        g = torch.Generator().manual_seed(777)
        cond = torch.tensor(prompts).repeat_interleave(per)
        x_T = torch.randn((cond.shape[0], 1, 8, 8), generator=g)
        a = sample_prompts(bundle.ref, bundle.schedule, cond, bundle.guidance, bundle.sample_steps, g, x_T=x_T)
        b = sample_prompts(bundle.net, bundle.schedule, cond, bundle.guidance, bundle.sample_steps, g, x_T=x_T)
        rows, labels = [], []
        for i, p in enumerate(prompts):
            rows += [a[i * per:(i + 1) * per], b[i * per:(i + 1) * per]]
            what = "erased" if p in bundle.forget_concepts else "kept"
            labels += [f"digit {prompt_digit(p)} ({what}): pretrained", f"digit {prompt_digit(p)} ({what}): unlearned"]
        return _save_grid(path, rows, labels)
