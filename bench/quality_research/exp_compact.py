"""Step 2B: attention-matching variants. Usage:
  python exp_compact.py DOC PKEY FRAMING VARIANT [VARIANT ...]
VARIANT = name:key=value,key=value (AMOptions fields), e.g. default: or slots:rotation=slots
Special values: prompts=@generic (GENERIC_PROMPTS below), prompts=@devq / answers=@deva (dev questions/answers:
a DIAGNOSTIC oracle only, never a recipe).
"""
import sys
import time

import torch

torch.set_num_threads(1)
import attention_matching as am
from common import *
from eval_lib import Prefix

GENERIC_PROMPTS = (
    "What is this document about?",
    "Summarize the main points of the document.",
    "List the key terms the document defines and what each one means.",
    "What are the most important rules or facts in the document?",
    "Quote the sentence of the document that you find most important.",
    "Which conditions or exceptions does the document mention?",
    "Explain the document to a newcomer, section by section.",
    "What questions could someone answer using this document?",
)


def parse(v, name):
    label, _, kv = v.partition(":")
    kw = {}
    for item in filter(None, kv.split(",")):
        k, _, val = item.partition("=")
        f = am.AMOptions.__dataclass_fields__[k]
        typ = type(f.default)
        if val == "@generic":
            kw[k] = GENERIC_PROMPTS
        elif val == "@devq":
            kw[k] = tuple(x["question"] for x in dev(name))
        elif val == "@deva":
            kw[k] = tuple(x["answer"] for x in dev(name))
        elif typ is bool:
            kw[k] = val in ("1", "true", "True")
        elif typ is tuple:
            kw[k] = tuple(float(x) for x in val.split("/"))
        else:
            kw[k] = typ(val)
    return label, am.AMOptions(**kw)


if __name__ == "__main__":
    name, pkey, framing = sys.argv[1], sys.argv[2], sys.argv[3]
    variants = sys.argv[4:]
    model, tok = load_model()
    p = p_values(tok, name)[pkey]
    doc = doc_text(name)
    cache = {}
    for v in variants:
        label, opts = parse(v, name)
        res = am.compact_document(model, tok, doc, p, opts, cache=cache)
        pref = Prefix(res.keys, res.values, res.beta)
        torch.save({"keys": res.keys, "values": res.values, "beta": res.beta, "errors": res.errors,
                    "options": res.options}, f"{RES}/prefix/{name}_{pkey}_{label}.pt")
        extra = {"variant": v, "p_key": pkey}
        extra.update({k: x for k, x in res.timings.items()})
        extra.update({f"err_{k}": x for k, x in res.errors.items() if k != "per_layer"})
        extra["per_layer"] = res.errors["per_layer"]
        score(model, tok, name, pref, framing, f"AM {label}", extra)
        print("  per-layer doc_after:", " ".join(f"{x:.2f}" for x in res.errors["per_layer"].get("doc_after", [])))
        print("  per-layer total:", " ".join(f"{x:.3f}" for x in res.errors["per_layer"].get("total", [])), flush=True)
