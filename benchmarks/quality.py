"""Quality benchmark: SenCache against MagCache, TeaCache and FirstBlockCache at matched NFE on the reference model.

    python benchmarks/quality.py --out benchmarks/results/quality      # the committed full run (CPU: ~1 h)
    python benchmarks/quality.py --help                                # budgets, pairs, methods, steps

Same as ``sencache quality``: the harness lives in :mod:`sencache.quality` (methods in
:mod:`sencache.quality_methods`, table and plots in :mod:`sencache.quality_report`) so that the CLI runs it too.
"""

from sencache.quality import main

if __name__ == "__main__":
    main()
