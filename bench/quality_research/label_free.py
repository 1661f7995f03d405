"""Step 2C: label-free signals for a cartridge, computed from the document alone, to compare with dev answer NLL.

  rep_nll   : teacher-forced NLL of the whole document repeated by the assistant after the cartridge
              (same-conversation framing + "Repeat the previous context verbatim." + the document).
  quote_nll : 16 spans spread evenly over the document; for each, the user asks to continue a 12-token quote
              and the assistant's reply is the quote followed by the next 32 tokens; NLL of those 32 tokens.
Usage: python label_free.py DOC PKEY LABEL [LABEL...]   (LABEL = a saved prefix, or @none, @icl, @firstp)
Writes rows to results/label_free.jsonl.
"""
import json
import sys

import torch

torch.set_num_threads(1)
from common import *
from eval_lib import Prefix, encode, forward, template_split

REPEAT = "Repeat the previous context verbatim."


@torch.no_grad()
def seg_nll(model, prefix, prompt_ids, target_ids, start):
    ids = list(prompt_ids) + list(target_ids)
    n0 = len(prompt_ids)
    lg = forward(model, ids, start, prefix, logit_rows=slice(n0 - 1, len(ids) - 1))["logits"]
    lp = torch.log_softmax(lg.double(), -1)
    return float(-lp[torch.arange(len(target_ids)), torch.tensor(target_ids)].mean())


def signals(model, tok, name, prefix, start):
    doc = doc_text(name)
    before, between, after = template_split(tok)
    dids = encode(tok, doc)
    out = {}
    out["rep_nll"] = seg_nll(model, prefix, encode(tok, between + REPEAT + after), dids, start)
    q = []
    n = len(dids)
    for k in range(16):
        s = int(n * (k + 0.5) / 16) - 22
        quote = tok.decode(dids[s:s + 12])
        cont = dids[s + 12:s + 44]
        prompt = encode(tok, between + f"Continue this passage of the document: \"{quote}\"" + after) + dids[s:s + 12]
        q.append(seg_nll(model, prefix, prompt, cont, start))
    out["quote_nll"] = sum(q) / len(q)
    return out


if __name__ == "__main__":
    name, pkey = sys.argv[1], sys.argv[2]
    model, tok = load_model()
    p = p_values(tok, name)[pkey]
    for label in sys.argv[3:]:
        if label == "@none":
            pref, start = None, 0
            # no context: the document-free "same conversation" needs a system turn; use the default one
            # by rendering a new chat: approximate with an empty prefix (start 0) and the same suffixes
        elif label == "@icl":
            pref = doc_kv(model, tok, name); start = pref.p
        elif label == "@firstp":
            pref = doc_kv(model, tok, name).slice(slice(0, p)); start = p
        else:
            d = torch.load(f"{RES}/prefix/{name}_{pkey}_{label}.pt")
            pref = Prefix(d["keys"], d["values"], d["beta"]); start = pref.p
        sig = signals(model, tok, name, pref, start)
        row = {"doc": name, "p_key": pkey, "label": label, **sig}
        print(row, flush=True)
        with open(f"{RES}/label_free.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
