"""Where each answer lies in its document (token offsets), for SOURCES.md. Answers are located by the longest
common substring (whitespace-normalised, case-insensitive) between the answer and the document."""
import json, re, sys
from difflib import SequenceMatcher
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained("/work/research/smollm2_f32")
Q = "/work/main/examples/data/quality"
sets = {"apache": ("/work/main/examples/data/apache-2.0.txt", [f"{Q}/apache-2.0.dev.qa.jsonl", f"{Q}/apache-2.0.heldout.qa.jsonl"]),
        "pycustom": (f"{Q}/python-basic-customization.txt", [f"{Q}/python-basic-customization.dev.qa.jsonl", f"{Q}/python-basic-customization.heldout.qa.jsonl"])}
out = {}
for name, (txt, files) in sets.items():
    doc = open(txt).read()
    # normalised doc with a map back to original char offsets
    norm, cmap = [], []
    prev_space = False
    for i, ch in enumerate(doc):
        if ch.isspace():
            if prev_space: continue
            norm.append(" "); cmap.append(i); prev_space = True
        else:
            norm.append(ch.lower()); cmap.append(i); prev_space = False
    normdoc = "".join(norm)
    enc = tok(doc, add_special_tokens=False, return_offsets_mapping=True)
    offs = enc["offset_mapping"]; n = len(offs)
    def tok_at(c):
        for t, (a, b) in enumerate(offs):
            if b > c: return t
        return n - 1
    p8, p16 = n // 8, n // 16
    for f in files:
        rows = []
        for line in open(f):
            qa = json.loads(line)
            a = re.sub(r"\s+", " ", qa["answer"]).lower().strip()
            a = re.sub(r"^(yes|no)\. ", "", a)
            sm = SequenceMatcher(None, normdoc, a, autojunk=False)
            m = sm.find_longest_match(0, len(normdoc), 0, len(a))
            # extend: answer's span in the doc = the longest match, mapped back
            start_c = cmap[m.a]; end_c = cmap[min(m.a + m.size, len(cmap) - 1)]
            ts, te = tok_at(start_c), tok_at(end_c - 1)
            rows.append({"q": qa["question"][:60], "match_chars": m.size, "answer_chars": len(a), "tok_start": ts, "tok_end": te})
        inside8 = sum(r["tok_end"] < p8 for r in rows); straddle8 = sum(r["tok_start"] < p8 <= r["tok_end"] for r in rows)
        inside16 = sum(r["tok_end"] < p16 for r in rows); straddle16 = sum(r["tok_start"] < p16 <= r["tok_end"] for r in rows)
        out[f] = {"n_doc_tokens": n, "p8": p8, "p16": p16, "in_first_p8": inside8, "straddle_p8": straddle8,
                  "in_first_p16": inside16, "straddle_p16": straddle16, "rows": rows}
        print(f.split("/")[-1], n, "p8", p8, "inside", inside8, "straddle", straddle8, "| p16", p16, inside16, straddle16)
        for r in rows: print("   ", r)
json.dump(out, open("/work/research/results/answer_locations.json", "w"), indent=1)
