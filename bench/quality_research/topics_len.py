import pydoc_data.topics as t
from transformers import AutoTokenizer
tok=AutoTokenizer.from_pretrained("/work/main/models", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
for k,v in sorted(t.topics.items(), key=lambda kv:-len(kv[1])):
    n=len(tok(v)["input_ids"])
    if n>1200: print(k,n)
