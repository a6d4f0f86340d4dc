"""The robustness ladder: does an unlearned model's erased concept come back under attack, and at what budget?

``unlearnbench attack RUN_DIR`` attacks every ok trial of a run saved with ``--save-models`` plus two references per
seed, the pretrained network (the upper bound) and the retrained one (:mod:`unlearnbench.robustness.references`, exact
unlearning), through the same executor as ``run`` (:func:`unlearnbench.sweep.run_sweep`). An attack trial is one
(model, attack) pair that climbs the whole ladder of budgets, scoring the task's concept measure at every rung:

- ``relearn``: fine-tune all weights for k steps (Adam, the same settings for every model) on a fixed small sample
  of the forgotten data: ``n_samples`` pretrained-model samples of the erased concepts (under the prompt the task
  scores), or the forget images. Also reports ``steps_to_half``: the first k (linearly interpolated between rungs)
  at which the measure reaches half the pretrained network's level; missing when the ladder ends first.
- ``embedding``: textual inversion / UnlearnDiffAtk style: the network is frozen and the conditioning input of the
  scored prompt (its row of the prompt-embedding table: the mixtures' prompt input, the digits' class tokens) is
  optimised for k steps to denoise the same forget sample; the measure is read on samples from that input.
- ``mia`` (data tasks): loss-based membership inference. Per-sample denoising loss (the ELBO's diffusion part on
  fixed steps, with the same noise for every sample and model) of the forget images against held-out data of the
  same distribution; AUC and TPR at 1 % FPR with 95 % bootstrap intervals (members have lower loss).

The concept measure (higher = more of the concept is back) is the task's (its ``attack_measure`` and
``robustness_measure``): ``forgotten_mass`` (gmm-concept, max over erased components of the pretrained posterior mass
in null-prompt samples), ``forget_mass`` (gmm-data, the same for forget points), ``acc_forget`` (digits-concept,
classifier accuracy on erased-prompt samples), ``regen_rate`` (digits-data). Every rung is evaluated with the same
generator, so models are compared on the same noise.

Besides the attacks, every run's retrained reference is scored once per seed by the task's own evaluation (trial
``reference--retrained-s<seed>``, attack name ``reference``, metrics with the task's roles): the reference row every
metric of the leaderboard gets next to the pretrained model's value.

Records (same schema as trials, in ``RUN_DIR/attack/records.jsonl``) carry the source trial's method, grid and seed,
an ``attack`` field (name, budgets, source trial or reference, the ladder), and metrics of role ``robustness`` named
``<attack>_<measure>@<budget>``, ``relearn_steps_to_half``, ``mia_auc`` and ``mia_tpr_at_1fpr``.

The wing: :mod:`~unlearnbench.robustness.plan` (which attack trials a finished run gets: names, budgets, sources,
references), :mod:`~unlearnbench.robustness.attacks` (the ``ATTACKS`` registry and the built-in attacks over a
task's measure), :mod:`~unlearnbench.robustness.trial` (one attack trial: load the model, climb the ladder, return
the record), :mod:`~unlearnbench.robustness.references` (the retrained reference). A new attack is one file in this
package that registers itself with ``@ATTACKS.register("name")`` (see :class:`~unlearnbench.robustness.attacks.Attack`).
"""
