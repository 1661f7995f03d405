"""Answer-NLL evaluation of cartridges (a KV prefix of p slots), reproducing `cartridge eval`.

Everything runs through the Hugging Face model with one custom attention function ("cartlab") that
  * prepends a KV prefix (per layer: keys/values [H_kv, P, D]; keys post-RoPE) that every real token sees,
  * optionally adds a per-slot logit bias beta (per layer [H_kv, P]) to the prefix slots (non-PEFT upper bound),
  * optionally records the post-RoPE queries, keys and values of the real tokens (for reference queries and
    for building caches chunk by chunk).
Real tokens get explicit RoPE positions (start_pos + i), so any framing/position convention can be measured.

Scoring (`cartridge eval`): answer NLL = mean over questions of the mean NLL per answer token; the answer is
tokenised without special tokens and appended directly after the prompt.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

GGUF_DIR = "/work/main/models"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHED_DIR = "/work/research/smollm2_f32"  # the same weights, de-quantised once and saved (fast to load)
DATA = "/work/main/examples/data"

# ----------------------------------------------------------------------------------------------------------
# attention with a prefix

_STATE: dict = {"prefix": None, "beta": None, "record": False, "rec": None}


def _cartlab_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """query [B,Hq,n,D] (post-RoPE), key/value [B,Hkv,n,D] of the real tokens only (no HF cache is used)."""
    layer = module.layer_idx
    B, Hq, n, D = query.shape
    Hkv = key.shape[1]
    g = Hq // Hkv
    if _STATE["record"]:
        _STATE["rec"][layer] = (query[0].detach(), key[0].detach(), value[0].detach())
    q = query.view(B, Hkv, g, n, D)
    s_new = torch.einsum("bhgnd,bhmd->bhgnm", q, key) * scaling
    causal = torch.ones(n, n, dtype=torch.bool, device=query.device).tril()
    s_new = s_new.masked_fill(~causal, float("-inf"))
    prefix = _STATE["prefix"]
    if prefix is not None:
        pk, pv = prefix[layer]  # [Hkv, P, D]
        s_pre = torch.einsum("bhgnd,hpd->bhgnp", q, pk.to(q.dtype)) * scaling
        beta = _STATE["beta"]
        if beta is not None and beta[layer] is not None:
            s_pre = s_pre + beta[layer][None, :, None, None, :].to(q.dtype)
        P = pk.shape[1]
        w = torch.softmax(torch.cat([s_pre, s_new], dim=-1), dim=-1)
        out = torch.einsum("bhgnp,hpd->bhgnd", w[..., :P], pv.to(q.dtype)) + torch.einsum(
            "bhgnm,bhmd->bhgnd", w[..., P:], value)
    else:
        w = torch.softmax(s_new, dim=-1)
        out = torch.einsum("bhgnm,bhmd->bhgnd", w, value)
    out = out.reshape(B, Hq, n, D).transpose(1, 2).contiguous()
    return out, None


AttentionInterface.register("cartlab", _cartlab_attention)
AttentionMaskInterface.register("cartlab", eager_mask)


def load_model(path: str | None = None):
    """The oracle model in float32 with the cartlab attention. Uses the de-quantised copy when present."""
    if path is None and os.path.isdir(CACHED_DIR):
        path = CACHED_DIR
    if path is None:
        tok = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE, dtype=torch.float32)
    else:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    model.config._attn_implementation = "cartlab"
    return model, tok


def model_dims(model):
    c = model.config
    L = c.num_hidden_layers
    Hq = c.num_attention_heads
    Hkv = getattr(c, "num_key_value_heads", None) or Hq
    D = getattr(c, "head_dim", None) or c.hidden_size // Hq
    return L, Hq, Hkv, D


# ----------------------------------------------------------------------------------------------------------
# prefix container and forward passes

@dataclass
class Prefix:
    """A KV prefix. keys[l], values[l]: [H_kv, P, D] (keys post-RoPE); beta[l]: [H_kv, P] or None."""
    keys: list
    values: list
    beta: list | None = None
    info: dict = field(default_factory=dict)

    @property
    def p(self) -> int:
        return self.keys[0].shape[1]

    def slice(self, idx) -> "Prefix":
        return Prefix([k[:, idx] for k in self.keys], [v[:, idx] for v in self.values],
                      None if self.beta is None else [b[:, idx] for b in self.beta])

    def to_prompt_embeddings(self) -> torch.Tensor:
        """PEFT layout (spec A3.3): row t = [K_0 | V_0 | ... | K_{L-1} | V_{L-1}], each [H_kv, D] flattened."""
        rows = []
        for k, v in zip(self.keys, self.values):
            rows += [k.permute(1, 0, 2).reshape(self.p, -1), v.permute(1, 0, 2).reshape(self.p, -1)]
        return torch.cat(rows, dim=1).contiguous()

    @staticmethod
    def from_prompt_embeddings(emb: torch.Tensor, L: int, Hkv: int, D: int) -> "Prefix":
        P = emb.shape[0]
        x = emb.view(P, 2 * L, Hkv, D).permute(1, 2, 0, 3)  # [2L, H, P, D]
        return Prefix([x[2 * l].contiguous() for l in range(L)], [x[2 * l + 1].contiguous() for l in range(L)])

    @staticmethod
    def cat(a: "Prefix", b: "Prefix") -> "Prefix":
        beta = None
        if a.beta is not None or b.beta is not None:
            za = a.beta or [torch.zeros(k.shape[:2]) for k in a.keys]
            zb = b.beta or [torch.zeros(k.shape[:2]) for k in b.keys]
            beta = [torch.cat([x, y], 1) for x, y in zip(za, zb)]
        return Prefix([torch.cat([x, y], 1) for x, y in zip(a.keys, b.keys)],
                      [torch.cat([x, y], 1) for x, y in zip(a.values, b.values)], beta)


@torch.no_grad()
def forward(model, ids, start_pos: int = 0, prefix: Prefix | None = None, record: bool = False,
            logits: bool = True, chunk: int = 0, logit_rows: slice | None = None):
    """Run real tokens `ids` (list[int]) at positions start_pos.. after `prefix`.

    Returns dict(logits [n, V] or None, q/k/v: lists per layer [H, n, D] when record).
    With chunk > 0 the sequence is processed in chunks (each chunk sees the prefix and the earlier chunks).
    """
    n = len(ids)
    if chunk and n > chunk:
        outs = []
        pref = prefix
        qs = None
        for s in range(0, n, chunk):
            r = forward(model, ids[s:s + chunk], start_pos + s, pref, record=True, logits=logits)
            outs.append(r)
            new = Prefix(r["k"], r["v"])
            pref = new if pref is None else Prefix.cat(pref, new)
        res = {"logits": torch.cat([o["logits"] for o in outs]) if logits else None}
        if record:
            for name in "qkv":
                res[name] = [torch.cat([o[name][l] for o in outs], dim=1) for l in range(len(outs[0]["k"]))]
        return res
    _STATE["prefix"] = None if prefix is None else list(zip(prefix.keys, prefix.values))
    _STATE["beta"] = None if prefix is None else prefix.beta
    _STATE["record"] = record
    L = model.config.num_hidden_layers
    _STATE["rec"] = [None] * L
    try:
        x = torch.tensor([ids])
        pos = torch.arange(start_pos, start_pos + n)[None]
        if logits:
            h = model.model(input_ids=x, position_ids=pos, use_cache=False).last_hidden_state[0]
            out = model.lm_head(h if logit_rows is None else h[logit_rows])
        else:
            model.model(input_ids=x, position_ids=pos, use_cache=False)
            out = None
        res = {"logits": out}
        if record:
            res["q"] = [r[0] for r in _STATE["rec"]]
            res["k"] = [r[1] for r in _STATE["rec"]]
            res["v"] = [r[2] for r in _STATE["rec"]]
        return res
    finally:
        _STATE.update(prefix=None, beta=None, record=False, rec=None)


def kv_of(model, ids, start_pos=0, chunk=1024) -> Prefix:
    """The KV cache (post-RoPE keys at positions start_pos..) of `ids` as a Prefix."""
    r = forward(model, ids, start_pos, record=True, logits=False, chunk=chunk)
    return Prefix(r["k"], r["v"])


# ----------------------------------------------------------------------------------------------------------
# chat template, framings

def render(tok, messages, add_generation_prompt):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def chat_ids(tok, messages, add_generation_prompt):
    """transformers' apply_chat_template(tokenize=True): render, then tokenise without special tokens."""
    return encode(tok, render(tok, messages, add_generation_prompt))


PLACEHOLDER_DOC = "\u2063DOCUMENT\u2063"
PLACEHOLDER_Q = "\u2063QUESTION\u2063"


def template_split(tok):
    """Render [system: PH_doc, user: PH_q] (+ generation prompt) and split it at the placeholders.

    Returns (before_doc, between_doc_and_question, after_question): the ICL prompt is
    before_doc + DOC + between + Q + after.  The "same conversation" framing after a cartridge is
    between + Q + after; its cartridge is the KV of before_doc + DOC (the system turn, not closed).
    """
    s = render(tok, [{"role": "system", "content": PLACEHOLDER_DOC}, {"role": "user", "content": PLACEHOLDER_Q}],
               True)
    i = s.index(PLACEHOLDER_DOC)
    j = s.index(PLACEHOLDER_Q)
    return s[:i], s[i + len(PLACEHOLDER_DOC):j], s[j + len(PLACEHOLDER_Q):]


def doc_turn_ids(tok, doc):
    """Tokens of the document's (open) system turn: before_doc + DOC, as the cartridge's source."""
    before, _, _ = template_split(tok)
    return encode(tok, before + doc)


def framing_prompt(tok, framing: str, q: str, doc: str | None = None):
    """Prompt tokens that follow a cartridge.

    'new_chat'   (i)  today's: apply_chat_template([user: q], gen) -> default system prompt, then q.
    'same_conv'  (ii) what [system: DOC, user: q] renders after the document's text (turn closed, q asked).
    'user_only'  (iii) the user turn only, as if the cartridge were a closed system turn
                 (= same_conv without the system turn's closing tokens).
    """
    if framing == "new_chat":
        return chat_ids(tok, [{"role": "user", "content": q}], True)
    before, between, after = template_split(tok)
    if framing == "same_conv":
        return encode(tok, between + q + after)
    if framing == "user_only":
        # render [system: X, user: q] minus render([system: X]) : the user turn + generation prompt
        sys_only = render(tok, [{"role": "system", "content": PLACEHOLDER_DOC}], False)
        full = render(tok, [{"role": "system", "content": PLACEHOLDER_DOC}, {"role": "user", "content": q}], True)
        assert full.startswith(sys_only)
        return encode(tok, full[len(sys_only):])
    raise ValueError(framing)


# ----------------------------------------------------------------------------------------------------------
# scoring

def read_qa(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@torch.no_grad()
def nll_of_answer(model, prefix: Prefix | None, prompt, answer, start_pos: int):
    ids = list(prompt) + list(answer)
    n0 = len(prompt)
    lg = forward(model, ids, start_pos, prefix, logit_rows=slice(n0 - 1, len(ids) - 1))["logits"]
    lp = torch.log_softmax(lg.double(), -1)
    tgt = torch.tensor(answer)
    return float(-lp[torch.arange(len(answer)), tgt].mean())


def eval_prefix(model, tok, prefix: Prefix | None, qa, framing="new_chat", start_pos=None):
    """Per-question answer NLL with `prefix` (None = no context) and real tokens at start_pos (default p)."""
    if start_pos is None:
        start_pos = 0 if prefix is None else prefix.p
    out = []
    for item in qa:
        prompt = framing_prompt(tok, framing, item["question"])
        ans = encode(tok, item["answer"])
        out.append(nll_of_answer(model, prefix, prompt, ans, start_pos))
    return out


def eval_no_context(model, tok, qa):
    return eval_prefix(model, tok, None, qa, "new_chat")


def eval_icl(model, tok, doc, qa, doc_kv: Prefix | None = None):
    """ICL exactly as `cartridge eval`: [system: doc, user: q] + generation prompt; the common prefix of all
    prompts is prefilled once (numerically the same as the full prompt)."""
    prompts = [chat_ids(tok, [{"role": "system", "content": doc}, {"role": "user", "content": x["question"]}], True)
               for x in qa]
    shared = min(len(p) for p in prompts) - 1
    for p in prompts:
        for i in range(shared):
            if p[i] != prompts[0][i]:
                shared = i
                break
    kv = kv_of(model, prompts[0][:shared]) if doc_kv is None or doc_kv.p != shared else doc_kv
    return [nll_of_answer(model, kv, p[shared:], encode(tok, x["answer"]), shared) for p, x in zip(prompts, qa)]


def fraction_of_gain(nll_cart, nll_none, nll_icl, n_boot=0, seed=0):
    """F = (mean(none) - mean(cart)) / (mean(none) - mean(icl)) and its paired standard error over questions.

    SE by the delta method on the ratio of means of the paired differences a_i = none_i - cart_i,
    b_i = none_i - icl_i:  Var(F) ~ (Var(a) - 2F Cov(a,b) + F^2 Var(b)) / (n * mean(b)^2).
    With n_boot > 0 also a paired bootstrap SE (resampling questions).
    """
    c = torch.tensor(nll_cart, dtype=torch.float64)
    z = torch.tensor(nll_none, dtype=torch.float64)
    i = torch.tensor(nll_icl, dtype=torch.float64)
    a, b = z - c, z - i
    n = len(a)
    F = float(a.mean() / b.mean())
    va, vb = a.var(unbiased=True), b.var(unbiased=True)
    cab = ((a - a.mean()) * (b - b.mean())).sum() / (n - 1)
    se = float(torch.sqrt((va - 2 * F * cab + F * F * vb) / (n * b.mean() ** 2)))
    res = {"F": F, "se": se}
    if n_boot:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, n, (n_boot, n), generator=g)
        fb = a[idx].mean(1) / b[idx].mean(1)
        res["se_boot"] = float(fb.std())
    return res


def mean(x):
    return sum(x) / len(x)


# ----------------------------------------------------------------------------------------------------------
# RoPE re-rotation of post-RoPE vectors

def rope_rotate(model, x: torch.Tensor, delta) -> torch.Tensor:
    """Rotate post-RoPE vectors x [..., n, D] by `delta` positions (int or tensor [n]); may be negative.

    RoPE at position t is the rotation R(t*theta_i) per channel pair, so R(delta) R(t) = R(t + delta) exactly
    (true for rope types whose cos/sin are pure rotations; an attention_scaling != 1 is divided out)."""
    n = x.shape[-2]
    if not torch.is_tensor(delta):
        delta = torch.full((n,), int(delta))
    pos = delta.to(torch.float32)[None]
    rot = model.model.rotary_emb
    cos, sin = rot(x.reshape(1, -1, x.shape[-1])[:, :1], pos)
    scale = getattr(rot, "attention_scaling", 1.0) or 1.0
    cos, sin = cos[0] / scale, sin[0] / scale  # [n, D]
    D = x.shape[-1]
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    rh = torch.cat([-x2, x1], dim=-1)
    return x * cos + rh * sin
