"""Hand mutations of the concept baselines (uce, ca, fmn, mace): each swaps the prompts or images a term is drawn
from (or the mask, the guide, the preserved set) and must make tests/test_concept_baselines.py fail.

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
for desc, path, old, new, k in muts:
    src = open(path).read()
    assert src.count(old) == 1, (desc, src.count(old))
    open(path, "w").write(src.replace(old, new))
    try:
        r = subprocess.run([".venv/bin/pytest", "tests/test_concept_baselines.py", "-x", "-q", "-k", k], capture_output=True, text=True)
        last = r.stdout.strip().splitlines()[-1]
        print(f"{'CAUGHT' if r.returncode else 'MISSED'}  {desc}: {last}", flush=True)
    finally:
        open(path, "w").write(src)
