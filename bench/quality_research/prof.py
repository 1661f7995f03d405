import torch, time
torch.set_num_threads(1)
from eval_lib import *
model, tok = load_model()
ids = list(range(1000, 1096))
forward(model, ids)
with torch.profiler.profile() as prof:
    forward(model, ids)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
