"""Smoke test of attention_matching on a tiny random Llama (no SmolLM2 constants)."""
import torch, time
torch.set_num_threads(1)
from transformers import LlamaConfig, LlamaForCausalLM, AutoTokenizer
import attention_matching as am
tok = AutoTokenizer.from_pretrained("/work/research/smollm2_f32")
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096)
model = LlamaForCausalLM(cfg).eval()
doc = open("/work/main/examples/data/apache-2.0.txt").read()[:1500]
# p = N with first selection, keep values, shift = 0 -> the cartridge is exactly the document's KV cache
N = len(am.encode(tok, am.template_parts(tok)[0] + doc))
r = am.compact_document(model, tok, doc, N, am.AMOptions(selection="first", values="keep"))
print("p=N identity errors", {k: v for k, v in r.errors.items() if k != "per_layer"})
for opts in [am.AMOptions(), am.AMOptions(on_policy=True), am.AMOptions(selection="omp"), am.AMOptions(beta="nnls"),
             am.AMOptions(beta="nudge"), am.AMOptions(rotation="slots", values="numer"),
             am.AMOptions(queries="repeat+doc", keep_first=8, keep_last=4), am.AMOptions(queries="doc"),
             am.AMOptions(queries="repeat+prompts", prompts=("What is this about?", "Summarise it."))]:
    r = am.compact_document(model, tok, doc, 40, opts)
    print(r.prompt_embeddings.shape, {k: round(v, 4) for k, v in r.errors.items() if k != "per_layer"},
          {k: round(v, 2) for k, v in r.timings.items()}, r.indices[0][0][:6].tolist(), r.positions[0][0][:3].tolist())
H, D = 2, 16
e = r.prompt_embeddings
assert torch.equal(e[5, ((2*1+1)*H+1)*D:((2*1+1)*H+1)*D+D], r.values[1][1][5])
assert torch.equal(e[7, ((2*0+0)*H+0)*D:D], r.keys[0][0][7])
print("ok")
