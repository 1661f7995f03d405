"""Step 2A: framings, first-p and whole-document (p = N) prefixes, both documents, dev sets."""
import torch, sys
torch.set_num_threads(1)
from common import *
from eval_lib import template_split, framing_prompt
model, tok = load_model()
print("template split:", [template_split(tok)])
for name in ["apache", "pycustom"]:
    b = baselines(model, tok, name)
    print(name, "none", mean(b["none"]), "icl", mean(b["icl"]))
    full = doc_kv(model, tok, name)             # open system turn: <|im_start|>system\n DOC
    closed = doc_kv(model, tok, name, closed=True)
    ps = p_values(tok, name)
    print(name, "N(open turn)=", full.p, "N(closed)=", closed.p, ps)
    for fr in ["new_chat", "same_conv", "user_only"]:
        score(model, tok, name, full, fr, "whole doc KV (open turn), p=N")
    score(model, tok, name, closed, "user_only", "whole doc KV (closed turn), p=N")
    score(model, tok, name, closed, "new_chat", "whole doc KV (closed turn), p=N")
    for key in ["8", "16"]:
        p = ps[key]
        for fr in ["new_chat", "same_conv", "user_only"]:
            score(model, tok, name, full.slice(slice(0, p)), fr, f"first-p (chat template), p=doc/{key}")
