"""Hand mutations of the concept baselines (uce, ca, fmn, mace; spm, advunlearn, sld): each swaps the prompts or images
a term is drawn from (or the mask, the guide, the preserved set, the anchors, the safety concept) and must make
tests/test_concept_baselines.py (tests/test_concept_baselines2.py for the second list) fail.

Run from the repository root: ``.venv/bin/python scripts/mutate_concept_baselines.py`` (restores every file).
"""
import subprocess
muts = [
 ("uce: erase and guide swapped", "methods/uce.py", "return forget.reshape(-1, d), guide.reshape(-1, d), keep", "return guide.reshape(-1, d), forget.reshape(-1, d), keep", "uce"),
 ("uce: preserve the erased prompts", "methods/uce.py", "kept = {\"kept+null\": list(b.retain_concepts) + [b.null_cond], \"kept\": list(b.retain_concepts)", "kept = {\"kept+null\": list(b.forget_concepts) + [b.null_cond], \"kept\": list(b.forget_concepts)", "uce_edit"),
 ("ca: trained and anchor prompts swapped", "methods/ca.py", "ablate = pixel_mse(self.net(x_t, t, target_prompt), target)", "ablate = pixel_mse(self.net(x_t, t, anchor), self.net(x_t, t, target_prompt).detach() if self.cfg.loss_type == 'model-based' else target)", "ca"),
 ("ca: target prompt drawn from the kept prompts", "methods/ca.py", "self.pick(list(self.bundle.forget_concepts), B)", "self.pick(list(self.bundle.retain_concepts), B)", "ca"),
 ("ca: anchor images of the erased prompt", "methods/ca.py", "x_t, t, noise = self.noised_ref(anchor)", "x_t, t, noise = self.noised_ref(self.cond(self.bundle.forget_concepts[0], n))", "ca"),
 ("fmn: images of the kept prompts", "methods/fmn.py", "x_t, t, _ = self.noised_ref(c)", "x_t, t, _ = self.noised_ref(self.pick(list(self.bundle.retain_concepts), B))", "fmn"),
 ("fmn: attention of the kept prompts", "methods/fmn.py", "            self.net(x_t, t, c)", "            self.net(x_t, t, self.pick(list(self.bundle.retain_concepts), B))", "fmn"),
 ("mace: mask inverted", "methods/mace.py", "out = out + (p[..., positions] * m)", "out = out + (p[..., positions] * (1 - m))", "mace_lora"),
 ("mace: refinement maps onto the erased prompt", "methods/mace.py", "guide = self.tokens([b.null_cond] * len(self.concepts))", "guide = self.tokens(list(b.retain_concepts)[:len(self.concepts)])", "mace_refinement"),
 ("mace: fusion and refinement preserve the erased prompts", "methods/mace.py", "return list(self.bundle.retain_concepts) + [self.bundle.null_cond]", "return list(self.bundle.forget_concepts)", "mace_fusion"),
 ("uce: the null prompt not preserved", "methods/uce.py", '"kept+null": list(b.retain_concepts) + [b.null_cond]', '"kept+null": list(b.retain_concepts)', "uce_edit"),
 ("uce sd: guide is the erased prompt itself", "methods/uce.py", "guide = prompt_tokens(self.net, [b.null_cond]).expand_as(forget)", "guide = forget", "uce_and_ca_on_sd"),
]
muts2 = [
 ("advunlearn: retain term reads the erased prompt", "methods/advunlearn.py", "retain = (self.net(x_r, t_r, r) - retain_target)", "retain = (self.net(x_r, t_r, self.cond(c, r.shape[0])) - retain_target)", "advunlearn"),
 ("advunlearn: retain prompts drawn from the erased ones", "methods/advunlearn.py", "r = self.pick(list(b.retain_concepts), cfg.retain_batch)", "r = self.pick(list(b.forget_concepts), cfg.retain_batch)", "advunlearn"),
 ("advunlearn: forget and retain x_t swapped", "methods/advunlearn.py", "x_t, t = self.sample_at(self.cond(c, B), k)\n        r = self.pick(list(b.retain_concepts), cfg.retain_batch)\n        x_r, t_r = self.sample_at(r, k)", "r = self.pick(list(b.retain_concepts), cfg.retain_batch)\n        x_r, t_r = self.sample_at(r, k)\n        x_t, t = self.sample_at(self.cond(c, B), k)", "advunlearn"),
 ("advunlearn: ESD term without the adversarial prefix", "methods/advunlearn.py", "e_n = eps_with_tokens(self.net, x_t, t, self.with_prefix(self.adv, c, B))", "e_n = self.net(x_t, t, self.cond(c, B))", "advunlearn"),
 ("advunlearn: attack regenerates the null prompt", "methods/advunlearn.py", "e_p = b.ref(x, t, self.cond(c, n))", "e_p = b.ref(x, t, self.cond(b.null_cond, n))", "advunlearn"),
 ("spm: anchors against the trained model", "methods/spm.py", "orig = eps_with_tokens(b.ref, xa, ta, anchors)", "orig = eps_with_tokens(self.net, xa, ta, anchors)", "spm"),
 ("spm: anchors around the null prompt", "methods/spm.py", "prompt_tokens(b.ref, [c])[0]", "prompt_tokens(b.ref, [b.null_cond])[0]", "spm"),
 ("spm: erased and neutral prompts swapped", "methods/spm.py", "target = esd_target(b.ref, x_t, t, concept, null, self.cfg.eta)", "target = esd_target(b.ref, x_t, t, null, concept, self.cfg.eta)", "spm"),
 ("sld: safety concept from the kept prompts", "methods/sld.py", "self.hook = SafetyGuidance(list(bundle.forget_concepts)", "self.hook = SafetyGuidance(list(bundle.retain_concepts)", "sld"),
 ("sld: momentum carried across trajectories", "methods/sld.py", 'if state["t"] is None or t_now >= state["t"]', 'if state["t"] is None', "sld"),
]
for desc, path, old, new, k, tests in [(*m, "tests/test_concept_baselines.py") for m in muts] + \
        [(*m, "tests/test_concept_baselines2.py") for m in muts2]:
    src = open(path).read()
    assert src.count(old) == 1, (desc, src.count(old))
    open(path, "w").write(src.replace(old, new))
    try:
        r = subprocess.run([".venv/bin/pytest", tests, "-x", "-q", "-k", k], capture_output=True, text=True)
        last = r.stdout.strip().splitlines()[-1]
        print(f"{'CAUGHT' if r.returncode else 'MISSED'}  {desc}: {last}", flush=True)
    finally:
        open(path, "w").write(src)
