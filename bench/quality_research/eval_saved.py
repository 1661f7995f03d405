"""Evaluate saved prefixes (results/prefix/*.pt) under other framings: python eval_saved.py DOC PKEY FRAMING LABEL..."""
import sys, torch
torch.set_num_threads(1)
from common import *
from eval_lib import Prefix
name, pkey, framing = sys.argv[1:4]
model, tok = load_model()
for label in sys.argv[4:]:
    d = torch.load(f"{RES}/prefix/{name}_{pkey}_{label}.pt")
    pref = Prefix(d["keys"], d["values"], d["beta"])
    score(model, tok, name, pref, framing, f"AM {label}", {"variant": "saved:" + label, "p_key": pkey})
