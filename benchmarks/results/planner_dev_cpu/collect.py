"""Calibrate on the harness's 8 calib pairs; uncached runs on calib + dev pairs capturing reuse-distance tables."""
import sys, torch, pickle
torch.set_num_threads(1)
from sencache.quality import make_pairs, generate
from sencache.quality_methods import _sencache_calibrate
from sencache.reference.model import load_reference_pipeline
STEPS, W = 50, 6
pipe = load_reference_pipeline()
calibs = make_pairs(8, seed_base=40_000, offset=5)
devs = make_pairs(6, seed_base=50_000, offset=11)
what = sys.argv[1]
if what == "profile":
    prof = _sencache_calibrate(pipe, calibs, STEPS, True)
    prof.save("/tmp/pl/profile.pt") if hasattr(prof, "save") else pickle.dump(prof, open("/tmp/pl/profile.pkl", "wb"))
    sys.exit()
tr = pipe.transformer
G = 3.0
def run(pair):
    rec = {"in": [], "out": [], "f": []}
    h = [tr.blocks[0].register_forward_pre_hook(lambda m, a, kw: rec["in"].append((a[0] if a else kw["hidden_states"]).detach().clone()), with_kwargs=True),
         tr.blocks[-1].register_forward_hook(lambda m, a, o: rec["out"].append((o[0] if isinstance(o, tuple) else o).detach().clone()))]
    try:
        g = generate(pipe, pair, STEPS, on_output=lambda o: rec["f"].append(o.detach().clone()))
    finally:
        for x in h: x.remove()
    assert len(rec["f"]) == 2 * STEPS, len(rec["f"])
    res = [o - i for i, o in zip(rec["in"], rec["out"])]
    tabs = {}
    for name, seq in (("res", res), ("f", rec["f"])):
        c, u = seq[0::2], seq[1::2]
        gd = [uu + G * (cc - uu) for cc, uu in zip(c, u)]
        for tag, s in (("c", c), ("g", gd)):
            D = torch.full((STEPS, STEPS), float("nan"), dtype=torch.float64)
            for r in range(STEPS):
                for m in range(r + 1, min(STEPS, r + W + 1)):
                    D[r, m] = float((s[m].double() - s[r].double()).norm())
            tabs[f"{name}_{tag}"] = D
    return g, tabs
out = {}
pairs = calibs if what == "calib" else devs
for p in pairs:
    g, tabs = run(p)
    out[(p.condition, p.seed)] = {"video": g.video, "tabs": tabs}
    print(what, p, flush=True)
torch.save(out, f"/tmp/pl/{what}.pt")
