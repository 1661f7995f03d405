import torch, time
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM, AutoTokenizer
t=time.time()
tok=AutoTokenizer.from_pretrained("/work/main/models", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
m=AutoModelForCausalLM.from_pretrained("/work/main/models", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", torch_dtype=torch.float32)
print(time.time()-t)
print(m.config)
print(repr(tok.apply_chat_template([{"role":"system","content":"DOCX"},{"role":"user","content":"QQ"}],tokenize=False,add_generation_prompt=True)))
print(repr(tok.apply_chat_template([{"role":"user","content":"QQ"}],tokenize=False,add_generation_prompt=True)))
print(repr(tok.apply_chat_template([{"role":"system","content":"DOCX"}],tokenize=False,add_generation_prompt=False)))
print(tok.chat_template)
print(m.model.layers[0].self_attn)
