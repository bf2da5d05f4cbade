"""eval3.py VARIANT: dev-pair PSNR with forecast="linear": 'fixed' (the searched eps, as the harness's forecast row) or
'eN' (the planned schedule with the early factor N in place of trajectories.EARLY_WEIGHT)."""
import sys, json, torch
torch.set_num_threads(1)
import sencache
from sencache import trajectories
from sencache.config import EPS_START_RATIO
from sencache.metrics import psnr
from sencache.profile import SensitivityProfile
from sencache.quality import make_pairs, generate
from sencache.reference.model import load_reference_pipeline
STEPS = 50
variant = sys.argv[1]
FIXED = {0.5: 0.16508917282468014, 0.4: 0.5693080712433038, 0.3: 1.681792830507429}
prof = SensitivityProfile.load("/tmp/pl/profile.pt")
dev = torch.load("/tmp/pl/dev.pt")
pairs = make_pairs(6, seed_base=50_000, offset=11)
if variant != "fixed":
    trajectories.EARLY_WEIGHT = float(variant[1:])
pipe = load_reference_pipeline()
res = {}
for b in (0.5, 0.4, 0.3):
    if variant == "fixed":
        cfg = sencache.SenCacheConfig(profile=prof, eps=FIXED[b], eps_start=FIXED[b] * EPS_START_RATIO,
                                      max_consecutive_skips=3, forecast="linear")
    else:
        cfg = sencache.SenCacheConfig(profile=prof, target_nfe=b * STEPS, schedule="planned", max_consecutive_skips=3,
                                      forecast="linear")
    sencache.apply_sencache(pipe, cfg)
    ps, nf, tl = [], [], []
    try:
        for pr in pairs:
            g = generate(pipe, pr, STEPS)
            ps.append(psnr(g.video, dev[(pr.condition, pr.seed)]["video"])); nf.append(g.nfe); tl.append(g.timeline)
    finally:
        sencache.remove_sencache(pipe)
    res[b] = {"psnr": ps, "nfe": nf, "timeline": tl[0]}
    print("F" + variant, b, "psnr %.2f" % (sum(ps) / len(ps)), "nfe %.2f" % (sum(nf) / len(nf)),
          [round(x, 2) for x in ps], "".join("x" if v > 0 else "." for v in tl[0]), flush=True)
json.dump(res, open(f"/tmp/pl/resF_{variant}.json", "w"))
