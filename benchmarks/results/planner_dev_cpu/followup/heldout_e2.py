"""The quality harness's planned forecasting row with the forecast's early factor 2 (sencache.trajectories.EARLY_WEIGHT,
4 as shipped), chosen on the 6 development pairs (eval3.py) before this held-out run."""
import sys
import sencache.trajectories as trajectories
trajectories.EARLY_WEIGHT = 2.0
from sencache.quality import QualitySettings, run_quality, render
out = sys.argv[1]
s = QualitySettings(budgets=(0.5, 0.4, 0.3), methods=("sencache_planned_forecast",), device="cpu")
run_quality(s, out, command="python heldout_e2.py (sencache.trajectories.EARLY_WEIGHT = 2.0, then the harness as "
            "python benchmarks/quality.py --device cpu --methods sencache_planned_forecast --budgets 0.5 0.4 0.3)")
print(render(out))
