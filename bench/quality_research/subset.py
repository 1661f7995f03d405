import json, sys
from eval_lib import fraction_of_gain, mean
rows=[json.loads(l) for l in open('results/log.jsonl')]
b=json.load(open('results/baseline_apache.json'))
for r in rows:
    if r['doc']!='apache': continue
    for nm, sl in [('old12', slice(0,12)), ('new12', slice(12,24))]:
        f=fraction_of_gain(r['per_q'][sl], b['none'][sl], b['icl'][sl])
        print(f"{nm} {r['label'][:40]:40s} {r['framing']:9s} p={r['p']} nll={mean(r['per_q'][sl]):.3f} F={f['F']:.3f}±{f['se']:.3f}")
