import torch, time
torch.set_num_threads(1)
from eval_lib import *
model, tok = load_model()
ids = chat_ids(tok, [{"role":"user","content":"What is the capital of France? Tell me a lot about it and its history please."}], True)*2
for i in range(3):
    t=time.time(); forward(model, ids); print(len(ids), time.time()-t)
doc = open(f"{DATA}/apache-2.0.txt").read()
qa = read_qa(f"{DATA}/apache-2.0.qa.jsonl")
print(encode(tok, "hi")) 
kv = kv_of(model, encode(tok, doc)[:256])
t=time.time(); cart = eval_prefix(model, tok, kv, qa, "new_chat"); print("first256 plain", mean(cart), time.time()-t)
