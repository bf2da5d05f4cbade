import json, glob, itertools, torch, math
from sencache import planner
from sencache.profile import SensitivityProfile
prof = SensitivityProfile.load("/tmp/pl/profile.pt")
traj = planner.Trajectories.from_profile(prof, 3)
calib = torch.load("/tmp/pl/calib.pt")
n = 50
gap = torch.cat([prof.dt[:-1], prof.timesteps[-1:].abs()]); ds = gap / prof.timesteps.abs().max()
growth = (1 + ds * prof.jx).flip(0).cumprod(0).flip(0); later = torch.cat([growth[1:], torch.ones(1, dtype=growth.dtype)])
data = {}
for f in glob.glob("res_*.json"):
    v = f[4:-5]; r = json.load(open(f))
    for b, x in r.items():
        mask = tuple(t > 0 for t in x["timeline"])
        data.setdefault(b, {})[mask] = (sum(x["psnr"]) / len(x["psnr"]), v)
score_tab = traj.scores(traj.reach.mean(0))
tabs = {k: torch.nan_to_num(torch.stack([c["tabs"][k] for c in calib.values()]).mean(0), nan=0.0) for k in ("f_c", "f_g", "res_c", "res_g")}
tabs["score"] = score_tab
def cost(mask, D, w):
    r, tot = 0, 0.0
    for m in range(1, n):
        if mask[m]: r = m
        else: tot += float(w[m] * D[r, m])
    return tot
def spearman(a, b):
    ra = torch.tensor(a).argsort().argsort().double(); rb = torch.tensor(b).argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
res = []
for key, D in [(k, tabs[k]) for k in ("f_c", "score")]:
    for a, bexp, e, l in itertools.product((1,), (1,), (1, 2, 4, 6, 8, 14), (1,)):
        st = torch.arange(n)
        w = ds**a * later**bexp * torch.where(st < 10, e, 1.0) * torch.where(st >= 40, l, 1.0)
        rho = []
        for b, d in data.items():
            masks = list(d); ps = [d[m][0] for m in masks]
            rho.append(spearman([-cost(m, D, w) for m in masks], ps))
        res.append((sum(rho) / len(rho), key, a, bexp, e, l, [round(x, 2) for x in rho]))
res.sort(reverse=True)
for r in res[:15]: print(r)
print("current:", [r for r in res if r[1] == "score" and r[2] == 1 and r[3] == 1 and r[4] == 2 and r[5] == 1])
for b, d in data.items(): print(b, len(d), sorted((round(p, 2), v) for p, v in d.values()))
