import torch, time
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM, AutoTokenizer
tok=AutoTokenizer.from_pretrained("/work/main/models", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
m=AutoModelForCausalLM.from_pretrained("/work/main/models", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32)
m.hf_quantizer=None; del m.config.quantization_config; m.is_quantized=False
m.save_pretrained("/work/research/smollm2_f32"); tok.save_pretrained("/work/research/smollm2_f32")
t=time.time()
m2=AutoModelForCausalLM.from_pretrained("/work/research/smollm2_f32", dtype=torch.float32); tok2=AutoTokenizer.from_pretrained("/work/research/smollm2_f32")
print("load", time.time()-t)
ids=tok("Hello world, this is a test of the Apache License.",return_tensors="pt").input_ids
print((m(ids).logits-m2(ids).logits).abs().max(), tok2("Hello <|im_start|> x").input_ids==tok("Hello <|im_start|> x").input_ids)
s=open("/work/main/examples/data/apache-2.0.txt").read()
print(tok.apply_chat_template([{"role":"system","content":s}],tokenize=True,add_generation_prompt=False)==tok2.apply_chat_template([{"role":"system","content":s}],tokenize=True,add_generation_prompt=False))
