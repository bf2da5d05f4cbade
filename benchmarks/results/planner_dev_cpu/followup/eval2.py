"""eval.py VARIANT [budgets...]: dev-pair PSNR of a planner variant (or 'fixed' at the committed searched eps)."""
import sys, math, json, torch
torch.set_num_threads(1)
import sencache
from sencache import planner
from sencache.config import EPS_START_RATIO
from sencache.metrics import psnr
from sencache.profile import SensitivityProfile
from sencache.quality import make_pairs, generate
from sencache.reference.model import load_reference_pipeline
STEPS = 50
variant = sys.argv[1]
FL = int(variant.split("@fl")[1]) if "@fl" in variant else None
variant = variant.split("@fl")[0]
budgets = [float(b) for b in sys.argv[2:]] or [0.5, 0.4, 0.3]
FIXED = {0.5: 0.16508917282468014, 0.4: 0.5693080712433038, 0.3: 1.681792830507429}
prof = SensitivityProfile.load("/tmp/pl/profile.pt")
calib = torch.load("/tmp/pl/calib.pt")
dev = torch.load("/tmp/pl/dev.pt")
pairs = make_pairs(6, seed_base=50_000, offset=11)
orig_choose = planner.choose_steps

def table(key):
    return torch.nan_to_num(torch.stack([v["tabs"][key] for v in calib.values()]).mean(0), nan=0.0)

def make_choose(kind):
    key, prior = kind.split(":")
    D = table(key)
    e = float(prior[1:])  # the early steps' factor (first 20%)
    def choose(traj, count):
        prof_ = prof
        gap = torch.cat([prof_.dt[:-1], prof_.timesteps[-1:].abs()]); ds = gap / prof_.timesteps.abs().max()
        growth = (1 + ds * prof_.jx).flip(0).cumprod(0).flip(0); later = torch.cat([growth[1:], torch.ones(1, dtype=growth.dtype)])
        n = ds.numel(); w = ds * later * torch.where(torch.arange(n) < 0.2 * n, e, 1.0)
        cost = w[None, :] * D
        class T: pass
        t2 = T(); t2.__dict__.update(traj.__dict__)
        t2.weight = torch.ones_like(w); t2.change = None; t2.forecast = False; t2.scores = lambda reach: cost
        return orig_choose(t2, count)
    return choose

orig_plan = planner.plan
if variant != "fixed" and variant != "planned":
    choose = make_choose(variant)
    def forced_plan(profile, target, *a, schedule="planned", max_consecutive_skips=3, **k):
        traj = planner.Trajectories.from_profile(profile, max_consecutive_skips)
        mask = choose(traj, round(target))
        table = planner._table(traj, mask)
        comp, err = planner.simulate(traj, table)
        return planner.Plan("planned", target, tuple(table.tolist()), planner._mean_nfe(comp),
                            tuple(comp.sum(1).double().tolist()), tuple(comp.double().mean(0).tolist()), float(err.mean()))
    planner.plan = forced_plan
pipe = load_reference_pipeline()
res = {}
for b in budgets:
    if variant == "fixed":
        cfg = sencache.SenCacheConfig(profile=prof, eps=FIXED[b], eps_start=FIXED[b] * EPS_START_RATIO, max_consecutive_skips=3)
        mask = None
    else:
        p = planner.plan(prof, b * STEPS, schedule="planned", max_consecutive_skips=3, force_last_steps=FL)
        cfg = sencache.SenCacheConfig(profile=prof, target_nfe=b * STEPS, schedule="planned", max_consecutive_skips=3, **({} if FL is None else {"force_last_steps": FL}))
        print("table kind:", "planned" if len(set(round(e, 12) for e in p.eps[12:])) > 2 else "fixed-shape",
              "predicted nfe %.2f" % p.predicted_nfe, flush=True)
    sencache.apply_sencache(pipe, cfg)
    ps, nf, tl = [], [], []
    try:
        for pr in pairs:
            g = generate(pipe, pr, STEPS)
            ps.append(psnr(g.video, dev[(pr.condition, pr.seed)]["video"])); nf.append(g.nfe); tl.append(g.timeline)
    finally:
        sencache.remove_sencache(pipe)
    res[b] = {"psnr": ps, "nfe": nf, "timeline": tl[0]}
    print(variant, b, "psnr %.2f" % (sum(ps) / len(ps)), "nfe %.2f" % (sum(nf) / len(nf)), [round(x, 2) for x in ps],
          "".join("x" if v > 0 else "." for v in tl[0]), flush=True)
json.dump(res, open(f"/tmp/pl/res_{sys.argv[1].replace(':', '_')}.json", "w"))
