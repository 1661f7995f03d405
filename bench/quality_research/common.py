"""Shared setup for the experiment scripts: documents, dev sets, cached baselines, result log."""
import json
import os
import time

import torch

from eval_lib import (Prefix, chat_ids, doc_turn_ids, encode, eval_icl, eval_no_context, eval_prefix,
                      fraction_of_gain, kv_of, load_model, mean, read_qa)

Q = "/work/main/examples/data/quality"
DOCS = {
    "apache": dict(txt="/work/main/examples/data/apache-2.0.txt", dev=f"{Q}/apache-2.0.dev.qa.jsonl"),
    "pycustom": dict(txt=f"{Q}/python-basic-customization.txt", dev=f"{Q}/python-basic-customization.dev.qa.jsonl"),
}
RES = "/work/research/results"
os.makedirs(RES, exist_ok=True)
LOG = f"{RES}/log.jsonl"


def doc_text(name):
    return open(DOCS[name]["txt"]).read()


def dev(name):
    return read_qa(DOCS[name]["dev"])


def p_values(tok, name):
    """p = floor(n/8) and floor(n/16), n = tokens of the document text alone."""
    n = len(encode(tok, doc_text(name)))
    return {"8": n // 8, "16": n // 16}


def baselines(model, tok, name):
    """no-context and ICL per-question answer NLL on the dev set (today's framing), cached on disk."""
    path = f"{RES}/baseline_{name}.json"
    if os.path.exists(path):
        return json.load(open(path))
    qa = dev(name)
    b = {"none": eval_no_context(model, tok, qa), "icl": eval_icl(model, tok, doc_text(name), qa)}
    json.dump(b, open(path, "w"))
    return b


_DOCKV = {}


def doc_kv(model, tok, name, closed=False) -> Prefix:
    """KV of the document's system turn: open (before + DOC) or closed (render([system: DOC]))."""
    key = (name, closed)
    if key not in _DOCKV:
        path = f"{RES}/kv_{name}_{'closed' if closed else 'open'}.pt"
        if os.path.exists(path):
            d = torch.load(path)
            _DOCKV[key] = Prefix(d["k"], d["v"])
        else:
            ids = chat_ids(tok, [{"role": "system", "content": doc_text(name)}], False) if closed else \
                doc_turn_ids(tok, doc_text(name))
            kv = kv_of(model, ids)
            torch.save({"k": kv.keys, "v": kv.values, "ids": ids}, path)
            _DOCKV[key] = kv
    return _DOCKV[key]


def score(model, tok, name, prefix, framing, label, extra=None, start_pos=None, log=True):
    qa = dev(name)
    b = baselines(model, tok, name)
    t = time.time()
    nll = eval_prefix(model, tok, prefix, qa, framing, start_pos=start_pos)
    fr = fraction_of_gain(nll, b["none"], b["icl"], n_boot=2000)
    row = {"doc": name, "label": label, "framing": framing, "p": None if prefix is None else prefix.p,
           "nll": mean(nll), "F": fr["F"], "se": fr["se"], "se_boot": fr["se_boot"], "per_q": nll,
           "eval_s": time.time() - t}
    if extra:
        row.update(extra)
    if log:
        with open(LOG, "a") as f:
            f.write(json.dumps(row) + "\n")
    print(f"[{name}] {label:50s} {framing:9s} p={row['p']} nll={row['nll']:.4f} F={fr['F']:.3f}±{fr['se']:.3f}"
          + ("" if not extra else " " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                  for k, v in extra.items() if k not in ("per_q", "per_layer"))), flush=True)
    return row
