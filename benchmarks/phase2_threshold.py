#!/usr/bin/env python
"""Phase 2 pair threshold: TKFT vs DSA at min_pair_size 10, 5 and 3 (ESS9, 2 questions x 2 seeds, n = 500, full truth).

Usage: .venv/bin/python benchmarks/phase2_threshold.py   (about 2 minutes on a quiet 2-core CPU)
"""
import time, numpy as np
from dsalib import surveys, methods, metrics
from dsalib.llm_methods import LanguageModel
lm = LanguageModel.load("smollm2-135m", prefix_cache_dir="cache/prefix")
s = surveys.load_survey("ess9"); attrs = s.check_background(None)
rows=[]
for q in ["imbgeco","lrscale"]:
    for seed in [0,1]:
        split = surveys.enhancement_split(s, q, 500, seed, "full", attrs)
        truth = split.truth.subset(split.truth.n>=10)
        for name, p2 in [("TKFT",{}),("DSA",{"min_pair_size":10}),("DSA",{"min_pair_size":5}),("DSA",{"min_pair_size":3})]:
            t=time.time()
            m = methods.make_method(name, lm=lm, survey=s, seed=seed, phase2=p2).fit(split.train)
            per = metrics.evaluate(m.predict(truth.keys), truth, 10)
            rep = m.report.get("phase2", {})
            sel = m.report.get("selection", {}).get("phase2", {})
            rows.append((q, seed, name, p2.get("min_pair_size"), per.jsd.mean(), rep.get("pairs"), rep.get("outcome"), sel.get("pairs"), time.time()-t))
            print(rows[-1], flush=True)
import pandas as pd
df=pd.DataFrame(rows, columns=["q","seed","method","mps","jsd","pairs","outcome","sel_pairs","sec"])
print(df.groupby(["method","mps"],dropna=False).jsd.mean())
