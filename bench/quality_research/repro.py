import torch, time
torch.set_num_threads(2)
from eval_lib import *
model, tok = load_model()
# sanity: cartlab == sdpa
ids = chat_ids(tok, [{"role":"user","content":"What is the capital of France?"}], True)
a = forward(model, ids)["logits"]
model.config._attn_implementation = "sdpa"
b = model(torch.tensor([ids])).logits[0]
model.config._attn_implementation = "cartlab"
print("cartlab vs sdpa", (a-b).abs().max().item())
# chunked == unchunked
doc = open(f"{DATA}/apache-2.0.txt").read()
dids = chat_ids(tok, [{"role":"system","content":doc}], False)
print("doc tokens", len(dids), len(encode(tok, doc)))
t=time.time(); kv1 = kv_of(model, dids, chunk=0); print("prefill", time.time()-t)
kv2 = kv_of(model, dids, chunk=700)
print("chunk diff", max((x-y).abs().max().item() for x,y in zip(kv1.keys+kv1.values, kv2.keys+kv2.values)))
# rope rotate check: keys of doc at positions shifted by 5 == rotate
kv3 = kv_of(model, dids[:50], start_pos=5, chunk=0)
print("rope rotate", (rope_rotate(model, kv1.keys[3][:, :50], 5) - kv3.keys[3]).abs().max().item())
qa = read_qa(f"{DATA}/apache-2.0.qa.jsonl")
t=time.time()
none = eval_no_context(model, tok, qa); print("none", mean(none), time.time()-t)
icl = eval_icl(model, tok, doc, qa); print("icl", mean(icl))
cart = eval_prefix(model, tok, kv1.slice(slice(0,256)), qa, "new_chat"); print("first256", mean(cart))
print(fraction_of_gain(cart, none, icl, n_boot=2000))
