"""Print markdown rows from results/log.jsonl: python tables.py DOC [substring filters...]"""
import json, sys, math
rows = [json.loads(l) for l in open('/work/research/results/log.jsonl')]
doc = sys.argv[1]; filt = sys.argv[2:]
def paired_se(a, b):
    d = [x - y for x, y in zip(a, b)]; n = len(d); m = sum(d) / n
    return m, math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1) / n)
for r in rows:
    if r['doc'] != doc: continue
    key = r['label'] + ' ' + r.get('variant', '')
    if filt and not any(f in key for f in filt): continue
    t = r.get('total_s', float('nan'))
    print(f"| {r['label']} | {r.get('variant','')} | {r['framing']} | {r['p']} | {r['nll']:.4f} | {r['F']:.3f} ± {r['se']:.3f} | "
          f"{r.get('err_doc_after', float('nan')):.3f} | {r.get('err_total', float('nan')):.3f} | {r.get('err_mass_ratio', float('nan')):.3f} | {t:.0f} |")
