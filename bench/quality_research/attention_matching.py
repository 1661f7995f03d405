"""Attention-matching initialisation of a cartridge (reference implementation / test oracle).

Compacts the KV cache of a whole document (N tokens) into p cartridge slots, per layer and KV head, following
"Fast KV Compaction via Attention Matching" (Zweiger et al., arXiv 2602.16284), adapted to the cartridge
(PEFT `CARTRIDGE`) convention: the prefix holds post-RoPE keys and values only (no per-slot bias), and the real
tokens that follow it sit at RoPE positions p, p+1, ...

Notation, for one layer l and one KV head h (head dim d, query group of g query heads):
  K, V  [N, d]   the document's cached keys (post-RoPE at positions 0..N-1) and values;
  Q     [R, d]   reference queries (post-RoPE), the g heads' queries of reference tokens that follow the
                 document (positions >= N), stacked: R = g * (number of reference tokens);
  S = Q K^T / sqrt(d)                    [R, N]  scores
  m_r = sum_j exp(S_rj)                  full-document attention mass of query r
  A = softmax_rows(S)                    [R, N]  attention over the document alone
  O = A V                                [R, d]  document-part attention output (the target)

See AMOptions for every choice and REPORT.md for the measurements behind the defaults. Everything is
deterministic (CPU, fixed order, no sampling). Works for any Hugging Face decoder whose layers take
(hidden_states, position_embeddings=...) and whose attention goes through `config._attn_implementation`
(Llama, Mistral, Qwen2/3, SmolLM, ...).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, asdict

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

REPEAT_PROMPT = "Repeat the previous context verbatim."


@dataclass
class AMOptions:
    selection: str = "attn_rms"     # attn_rms | attn_mean | attn_max | omp | first (first p tokens) | stride
    keep_first: int = 1             # first rows kept exact and forced (1 = the sink, the cartridge's frozen row)
    keep_last: int = 0              # last rows of the document kept exact and forced
    rotation: str = "shift"         # shift (t -> t-(N-p)) | slots (kept key c -> position c) | none | scaled
    rot_scale: float = 0.5          # rotation="scaled": t -> round(p-1 - (N-1-t)*rot_scale) (1 = shift)
    first_natural: bool = False     # keep_first rows keep their natural positions 0..k-1 (not shifted)
    queries: str = "repeat"         # repeat | doc | repeat+doc | prompts | repeat+prompts
    on_policy: bool = False         # reference queries of layer l computed with layers < l already compacted
    values: str = "ridge"           # ridge (normalised output) | numer (un-normalised numerator) | keep
    ridge: float = 1e-6             # lam = ridge * ||X||_2^2 (spectral scaling)
    beta: str = "none"              # none | nnls (upper bound, needs a bias) | nudge (PEFT stand-in: key nudge)
    beta_bounds: tuple = (math.exp(-3), math.exp(3))
    nudge_ridge: float = 1e-2       # ridge of the key nudge, relative to the trace/d of the weighted Gram
    max_queries: int = 8192         # reference query vectors per KV head used in the fit (uniform stride)
    heldout_every: int = 10         # every k-th reference token held apart for the error (0 = none)
    omp_k: int = 4                  # OMP: keys added per iteration
    omp_refit_every: int = 2        # OMP: NNLS refit every this many iterations
    repeat_prompt: str = REPEAT_PROMPT
    prompts: tuple = ()             # user prompts for queries="prompts" (each its own conversation after the doc)
    answers: tuple = ()             # optional assistant replies appended after each prompt's generation prompt
    chunk: int = 2048               # prefill chunk (memory only)
    refine_steps: int = 0           # Adam steps refining the non-exact slots' keys and values (0 = closed form only)
    refine_lr: float = 0.01         # Adam learning rate, relative to the RMS of the keys / values
    refine_mass: float = 0.1        # weight of the mass term mean_r (log m'_r - log m_r)^2 in the refinement
    refine_loss: str = "split"      # split (doc output + mass terms) | total (whole attention output incl. the
                                    # reference token's own context, which weighs the mass by what it changes)


@dataclass
class AMResult:
    prompt_embeddings: torch.Tensor        # [p, 2*L*H_kv*D], PEFT layout
    keys: list                             # per layer [H_kv, p, D] (cartridge frame, post-RoPE)
    values: list                           # per layer [H_kv, p, D]
    beta: list | None                      # per layer [H_kv, p] (only when options.beta == "nnls")
    indices: list                          # per layer [H_kv, p] original token index of each slot
    positions: list                        # per layer [H_kv, p] RoPE position of each slot's key
    n_doc: int                             # N
    source_ids: list                       # the N source tokens
    errors: dict = field(default_factory=dict)   # attention-output relative errors on held-apart queries
    timings: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------
# model plumbing: an attention function with a per-layer KV prefix (+ optional bias) that can record q/k/v

class _StopLayer(Exception):
    pass


_CTX: dict = {"prefix": None, "record": None, "stop": False}


def _am_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """query [1,Hq,n,D] post-RoPE; key/value [1,Hkv,n,D] of the new tokens. Causal among the new tokens; every
    new token sees the whole prefix _CTX['prefix'][layer] = (K [Hkv,P,D], V, beta [Hkv,P] or None)."""
    l = module.layer_idx
    if _CTX["record"] is not None:
        _CTX["record"][l] = (query[0], key[0], value[0])
        if _CTX["stop"]:
            raise _StopLayer()
    B, Hq, n, D = query.shape
    Hkv = key.shape[1]
    g = Hq // Hkv
    q = query.view(B, Hkv, g, n, D)
    s = torch.einsum("bhgnd,bhmd->bhgnm", q, key) * scaling
    s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    vals = [value]
    pref = None if _CTX["prefix"] is None else _CTX["prefix"][l]
    if pref is not None:
        pk, pv, pb = pref
        sp = torch.einsum("bhgnd,hpd->bhgnp", q, pk) * scaling
        if pb is not None:
            sp = sp + pb[None, :, None, None, :]
        s = torch.cat([sp, s], dim=-1)
        w = torch.softmax(s, dim=-1)
        P = pk.shape[1]
        out = torch.einsum("bhgnp,hpd->bhgnd", w[..., :P], pv) + torch.einsum("bhgnm,bhmd->bhgnd", w[..., P:], value)
    else:
        out = torch.einsum("bhgnm,bhmd->bhgnd", torch.softmax(s, dim=-1), value)
    return out.reshape(B, Hq, n, D).transpose(1, 2).contiguous(), None


AttentionInterface.register("am_prefix", _am_attention)
AttentionMaskInterface.register("am_prefix", eager_mask)


class _Model:
    """Layer-by-layer access to a HF decoder with the am_prefix attention."""

    def __init__(self, model):
        self.m = model
        self.base = model.model
        c = model.config
        self.L = c.num_hidden_layers
        self.Hq = c.num_attention_heads
        self.Hkv = getattr(c, "num_key_value_heads", None) or self.Hq
        self.D = getattr(c, "head_dim", None) or c.hidden_size // self.Hq

    def __enter__(self):
        self.old = self.m.config._attn_implementation
        self.m.config._attn_implementation = "am_prefix"
        return self

    def __exit__(self, *a):
        self.m.config._attn_implementation = self.old
        _CTX.update(prefix=None, record=None, stop=False)

    def embed(self, ids):
        return self.base.embed_tokens(torch.tensor([ids]))

    def pos_emb(self, h, start, n):
        return self.base.rotary_emb(h, torch.arange(start, start + n)[None])

    def layer(self, l, h, pe, prefix=None, record=False, stop=False):
        """Run layer l on hidden states h [1,n,hid] with position embeddings pe and a prefix for this layer.
        Returns (new h or None when stop, (q,k,v) of this layer when record)."""
        rec = [None] * self.L if record else None
        _CTX.update(prefix=None if prefix is None else _LayerMap(l, prefix), record=rec, stop=stop)
        try:
            out = self.base.layers[l](h, attention_mask=None, position_embeddings=pe)
            if isinstance(out, tuple):
                out = out[0]
        except _StopLayer:
            out = None
        finally:
            _CTX.update(prefix=None, record=None, stop=False)
        return out, (rec[l] if record else None)


class _LayerMap:
    def __init__(self, l, v):
        self.l, self.v = l, v

    def __getitem__(self, l):
        return self.v if l == self.l else None


def rope_rotate(model, x: torch.Tensor, delta) -> torch.Tensor:
    """Rotate post-RoPE vectors x [..., n, D] by delta positions (int or [n]); RoPE: R(a)R(b) = R(a+b)."""
    n = x.shape[-2]
    if not torch.is_tensor(delta):
        delta = torch.full((n,), int(delta))
    rot = model.model.rotary_emb
    cos, sin = rot(x.reshape(1, -1, x.shape[-1])[:, :1].float(), delta.to(torch.float32)[None])
    scale = getattr(rot, "attention_scaling", 1.0) or 1.0
    cos, sin = (cos[0] / scale).to(x.dtype), (sin[0] / scale).to(x.dtype)
    h = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., h:], x[..., :h]], dim=-1) * sin


def template_parts(tok):
    """Split the chat template around a placeholder document and question: (before_doc, between, after_q).
    ICL prompt = before_doc + DOC + between + Q + after_q; the cartridge's source is before_doc + DOC."""
    ph_d, ph_q = "\u2063DOCUMENT\u2063", "\u2063QUESTION\u2063"
    s = tok.apply_chat_template([{"role": "system", "content": ph_d}, {"role": "user", "content": ph_q}],
                                tokenize=False, add_generation_prompt=True)
    i, j = s.index(ph_d), s.index(ph_q)
    return s[:i], s[i + len(ph_d):j], s[j + len(ph_q):]


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------------------------------------
# per-(layer, head) math

def _lse_rows(S):
    return torch.logsumexp(S, dim=1, keepdim=True)


def select_keys(S: torch.Tensor, p: int, forced: list, method: str, opts: AMOptions):
    """Sorted indices of the p kept keys: `forced` plus p - len(forced) chosen. S [R, N] fitting scores."""
    N = S.shape[1]
    k = p - len(forced)
    forced_t = torch.tensor(forced, dtype=torch.long)
    if method == "first":
        rest = [i for i in range(N) if i not in set(forced)][:k]
        return torch.sort(torch.cat([forced_t, torch.tensor(rest, dtype=torch.long)])).values
    if k <= 0:
        return torch.sort(forced_t).values
    if method == "stride":
        cand = torch.tensor([i for i in range(N) if i not in set(forced)])
        pick = cand[torch.linspace(0, len(cand) - 1, k).round().long()]
        return torch.sort(torch.cat([forced_t, pick])).values
    if method.startswith("attn"):
        A = torch.softmax(S, dim=1)
        if method == "attn_rms":
            sc = (A * A).mean(0).sqrt()
        elif method == "attn_mean":
            sc = A.mean(0)
        elif method == "attn_max":
            sc = A.max(0).values
        else:
            raise ValueError(method)
        sc[forced_t] = -1.0
        chosen = torch.topk(sc, k).indices
        return torch.sort(torch.cat([forced_t, chosen])).values
    if method == "omp":
        return torch.sort(_omp_select(S, p, forced, opts)).values
    raise ValueError(method)


def _omp_select(S, p, forced, opts: AMOptions):
    """Orthogonal matching pursuit on the mass: columns E_j = exp(S_rj - lse_r) (relative mass per query), target
    1 (each query's full mass, relative); greedily add the omp_k columns most correlated with the residual,
    refit non-negative weights (clamped least squares) every omp_refit_every iterations."""
    E = torch.exp(S - _lse_rows(S)).double()          # [R, N], rows sum to 1
    R, N = E.shape
    target = torch.ones(R, dtype=torch.float64)
    sel = list(forced)
    mask = torch.zeros(N, dtype=torch.bool)
    mask[sel] = True
    current = E[:, sel].sum(1) if sel else torch.zeros(R, dtype=torch.float64)
    it = 0
    while len(sel) < p:
        corr = E.T @ (target - current)
        corr[mask] = -float("inf")
        new = torch.topk(corr, min(opts.omp_k, p - len(sel))).indices.tolist()
        sel += new
        mask[new] = True
        it += 1
        if it % opts.omp_refit_every == 0 or len(sel) >= p:
            M = E[:, sel]
            G = M.T @ M
            G.diagonal().add_(1e-10 * G.diagonal().mean())
            w = torch.linalg.solve(G, M.T @ target).clamp(min=1e-12)
            current = M @ w
        else:
            current = current + E[:, new].sum(1)
    return torch.tensor(sel, dtype=torch.long)


def fit_beta(Sc: torch.Tensor, lse_full: torch.Tensor, bounds, iters: int = 50):
    """w = exp(beta) >= 0 so that sum_c w_c exp(Sc_rc) ~ m_r, relative per query:
    min_w sum_r (sum_c w_c exp(Sc_rc - log m_r) - 1)^2, lo <= w <= hi (projected gradient from clamped lstsq)."""
    M = torch.exp(Sc - lse_full).double()            # [R, p]
    t = torch.ones(M.shape[0], dtype=torch.float64)
    lo, hi = bounds
    G = M.T @ M
    b = M.T @ t
    G.diagonal().add_(1e-10 * G.diagonal().mean())
    w = torch.linalg.solve(G, b).clamp(lo, hi)
    step = 1.0 / torch.linalg.matrix_norm(G, ord=2)
    for _ in range(iters):
        w = (w - step * (G @ w - b)).clamp(lo, hi)
    return torch.log(w).float()


def ridge_solve(X: torch.Tensor, Y: torch.Tensor, ridge: float):
    """(X^T X + lam I)^{-1} X^T Y in float64, lam = ridge * ||X||_2^2 (+ a 1e-12 relative jitter)."""
    X = X.double()
    G = X.T @ X
    lam = ridge * torch.linalg.matrix_norm(G, ord=2) if ridge > 0 else 0.0
    G.diagonal().add_(lam + 1e-12 * G.diagonal().mean())
    return torch.linalg.solve(G, X.T @ Y.double()).float()


def key_nudge(Qc: torch.Tensor, C1: torch.Tensor, beta: torch.Tensor, weights: torch.Tensor, rel_ridge: float):
    """PEFT-compatible stand-in for a bias: per slot c, dk_c = argmin sum_r a_rc (q_r.dk/sqrt(d) - beta_c)^2
    + lam ||dk||^2 (a_rc = the slot's attention weight for query r); returns C1 + dk."""
    R, d = Qc.shape
    Qs = (Qc / math.sqrt(d)).double()
    out = C1.clone()
    for c in range(C1.shape[0]):
        if beta[c] == 0:
            continue
        a = weights[:, c].double()
        Qw = Qs * a[:, None]
        G = Qs.T @ Qw
        G.diagonal().add_(rel_ridge * G.diagonal().mean() + 1e-12)
        out[c] = C1[c] + torch.linalg.solve(G, Qw.sum(0) * beta[c].double()).float()
    return out


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def compact_head(model, Qf, Kh, Vh, p, N, o: AMOptions, seg=None):
    """Compaction of one (layer, KV head). Qf [R, D] fitting queries in the ORIGINAL frame (absolute positions).
    Returns dict(idx, pos, keys (cartridge frame), values, beta_eff)."""
    D = Kh.shape[-1]
    scale = 1.0 / math.sqrt(D)
    shift = N - p
    S = (Qf @ Kh.T) * scale                               # [R, N]
    forced = sorted(set(range(min(o.keep_first, p))) | set(range(max(0, N - o.keep_last), N)))
    forced = forced[:p]
    idx = select_keys(S, p, forced, o.selection, o)
    if o.rotation == "shift":
        new_pos = idx - shift
    elif o.rotation == "slots":
        new_pos = torch.arange(p)
    elif o.rotation == "none":
        new_pos = idx.clone()
    elif o.rotation == "scaled":
        new_pos = (p - 1 - (N - 1 - idx).double() * o.rot_scale).round().long()
    else:
        raise ValueError(o.rotation)
    if o.first_natural:
        nat = idx < o.keep_first
        new_pos = torch.where(nat, idx, new_pos)
    C1 = rope_rotate(model, Kh[idx], new_pos - idx)
    Qfc = rope_rotate(model, Qf, -shift)                  # reference token at absolute a sits at a - shift
    Sc = (Qfc @ C1.T) * scale                             # [R, p] compact scores as seen after the cartridge
    lse = _lse_rows(S)
    beta_eff = torch.zeros(p)
    if o.beta in ("nnls", "nudge"):
        beta = fit_beta(Sc, lse, o.beta_bounds)
        if o.beta == "nnls":
            beta_eff = beta
        else:
            C1 = key_nudge(Qfc, C1, beta, torch.softmax(Sc + beta, dim=1), o.nudge_ridge)
            Sc = (Qfc @ C1.T) * scale
    O = torch.softmax(S, dim=1) @ Vh                      # [R, D] target
    exact = torch.tensor([i in set(forced) for i in idx.tolist()])
    Cv = Vh[idx].clone()
    if o.values != "keep" and (~exact).any():
        if o.values == "ridge":
            X = torch.softmax(Sc + beta_eff, dim=1)
        elif o.values == "numer":
            X = torch.exp(Sc + beta_eff - lse)            # compact weights relative to the FULL mass
        else:
            raise ValueError(o.values)
        Y = O - X[:, exact] @ Vh[idx[exact]] if exact.any() else O
        Cv[~exact] = ridge_solve(X[:, ~exact], Y, o.ridge)
    if o.refine_steps and (~exact).any():
        C1, Cv = refine_slots(Qfc, C1, Cv, O, lse, exact, beta_eff, o, seg)
    return {"idx": idx, "pos": new_pos, "keys": C1, "values": Cv, "beta": beta_eff}


def refine_slots(Qc, C1, Cv, O, lse, exact, beta, o: AMOptions, seg=None):
    """Gradient refinement of the free slots (PEFT-compatible: keys and values only), minimising
    ||softmax(Qc C1^T/sqrt(d) + beta) C2 - O||^2 / ||O||^2 + refine_mass * mean_r (lse_r(compact) - lse_r(full))^2
    with Adam (deterministic, full batch)."""
    d = C1.shape[-1]
    scale = 1.0 / math.sqrt(d)
    k = C1[~exact].clone().requires_grad_(True)
    v = Cv[~exact].clone().requires_grad_(True)
    kf, vf = C1[exact], Cv[exact]
    ks, vs = float(C1.pow(2).mean().sqrt()), float(Cv.pow(2).mean().sqrt())
    opt = torch.optim.Adam([{"params": [k], "lr": o.refine_lr * ks}, {"params": [v], "lr": o.refine_lr * vs}])
    on = O.pow(2).sum()
    if o.refine_loss == "total":
        lse_s, O_s = seg                                   # [R,1], [R,d] the token's own context
        w_full = torch.sigmoid(lse - lse_s)
        O_tot = w_full * O + (1 - w_full) * O_s
        ot = O_tot.pow(2).sum()
    with torch.enable_grad():
        for _ in range(o.refine_steps):
            Kc = torch.cat([kf, k]); Vc = torch.cat([vf, v])
            bc = torch.cat([beta[exact], beta[~exact]])
            Sc = (Qc @ Kc.T) * scale + bc
            if o.refine_loss == "total":
                w = torch.sigmoid(torch.logsumexp(Sc, 1, keepdim=True) - lse_s)
                loss = (w * (torch.softmax(Sc, 1) @ Vc) + (1 - w) * O_s - O_tot).pow(2).sum() / ot
            else:
                loss = ((torch.softmax(Sc, 1) @ Vc - O).pow(2).sum() / on
                        + o.refine_mass * (torch.logsumexp(Sc, 1, keepdim=True) - lse).pow(2).mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
    C1 = C1.clone(); Cv = Cv.clone()
    C1[~exact] = k.detach(); Cv[~exact] = v.detach()
    return C1, Cv


# --------------------------------------------------------------------------------------------------------
# driver

def reference_segments(tok, doc: str, o: AMOptions):
    """Token lists that follow the document (each its own continuation of the document's system turn)."""
    before, between, after = template_parts(tok)
    segs = []
    if "repeat" in o.queries:
        segs.append(encode(tok, between + o.repeat_prompt + after) + encode(tok, doc))
    if "prompts" in o.queries:
        for i, pr in enumerate(o.prompts):
            segs.append(encode(tok, between + pr + after) + (encode(tok, o.answers[i]) if o.answers else []))
    return segs


@torch.no_grad()
def compact_document(model, tok, doc: str, p: int, options: AMOptions | None = None, cache=None) -> AMResult:
    """Compact the KV cache of `doc` (as an open system turn) into p cartridge slots.

    cache: optional dict reused between calls on the same document (holds the document's K/V/queries and,
    for off-policy runs with the same segments, the reference queries); results do not depend on it.
    """
    o = options or AMOptions()
    t0 = time.time()
    before, _, _ = template_parts(tok)
    src = encode(tok, before + doc)
    N = len(src)
    if p > N:
        raise ValueError(f"p={p} > N={N}")
    shift = N - p
    cache = {} if cache is None else cache
    with _Model(model) as M:
        L, Hq, Hkv, D = M.L, M.Hq, M.Hkv, M.D
        g = Hq // Hkv
        # 1. the document: K, V (and its own queries) of every layer, one causal pass
        if cache.get("doc_key") != (tuple(src),):
            h = M.embed(src)
            pe = M.pos_emb(h, 0, N)
            doc_q, doc_k, doc_v = [], [], []
            for l in range(L):
                h, (q, k, v) = M.layer(l, h, pe, record=True)
                doc_q.append(q); doc_k.append(k); doc_v.append(v)
            cache.update(doc_key=(tuple(src),), doc_q=doc_q, doc_k=doc_k, doc_v=doc_v)
        doc_k, doc_v, doc_q = cache["doc_k"], cache["doc_v"], cache["doc_q"]
        t_doc = time.time() - t0

        # 2. reference segments, run layer by layer (on-policy: after layer l is compacted, the segments go
        #    through layer l with the compact prefix; off-policy: with the full document)
        segs = reference_segments(tok, doc, o)
        hs = [M.embed(s) for s in segs]
        pes_abs = [M.pos_emb(hs[i], N, len(s)) for i, s in enumerate(segs)]        # original frame
        pes_cart = [M.pos_emb(hs[i], p, len(s)) for i, s in enumerate(segs)]       # after the cartridge
        n_tok = [len(s) for s in segs]
        # held-apart tokens per segment (every heldout_every-th token, counted over all reference tokens)
        flat = sum(n_tok) + (N if "doc" in o.queries.split("+") else 0)
        hold = torch.zeros(flat, dtype=torch.bool)
        if o.heldout_every:
            hold[o.heldout_every - 1::o.heldout_every] = True
        fit_all = torch.nonzero(~hold)[:, 0]
        n_fit = max(1, min(len(fit_all), o.max_queries // g))
        fit_sel = fit_all[torch.linspace(0, len(fit_all) - 1, n_fit).round().long()]
        held_sel = torch.nonzero(hold)[:, 0]

        keys, values, betas, idxs, poss = [], [], [], [], []
        errs = {"doc_before": [], "doc_after": [], "total": [], "mass_ratio": []}
        t_fit = 0.0
        for l in range(L):
            # queries (and the segments' own keys/values) of layer l
            qkv = []
            for i in range(len(segs)):
                _, rec = M.layer(l, hs[i], pes_abs[i], record=True, stop=True)
                qkv.append(rec)
            Qparts = [r[0] for r in qkv]                                             # [Hq, n_i, D]
            if "doc" in o.queries.split("+"):
                Qparts.append(rope_rotate(model, doc_q[l], N))                      # doc queries moved by +N
            Qall = torch.cat(Qparts, dim=1)                                          # [Hq, flat, D]
            ts = time.time()
            K, V = doc_k[l], doc_v[l]
            lay = []
            for hh in range(Hkv):
                heads = slice(hh * g, (hh + 1) * g)
                Qf = Qall[heads][:, fit_sel].reshape(-1, D)
                seg = _own_context(Qall[heads], qkv, hh, n_tok, fit_sel, D) if o.refine_loss == "total" else None
                lay.append(compact_head(model, Qf, K[hh], V[hh], p, N, o, seg))
            t_fit += time.time() - ts
            ck = torch.stack([x["keys"] for x in lay]); cv = torch.stack([x["values"] for x in lay])
            cb = torch.stack([x["beta"] for x in lay])
            keys.append(ck); values.append(cv); betas.append(cb)
            idxs.append(torch.stack([x["idx"] for x in lay])); poss.append(torch.stack([x["pos"] for x in lay]))
            # errors on held-apart reference tokens
            _errors(model, errs, Qall, held_sel, qkv, n_tok, K, V, lay, g, N, shift)
            # advance the segments through layer l
            use_b = cb if o.beta == "nnls" else None
            for i in range(len(segs)):
                if o.on_policy:
                    hs[i], _ = M.layer(l, hs[i], pes_cart[i], prefix=(ck, cv, use_b))
                else:
                    kd = K
                    hs[i], _ = M.layer(l, hs[i], pes_abs[i], prefix=(kd, V, None))
    emb = to_prompt_embeddings(keys, values)
    errors = {k: (sum(v) / len(v) if v else float("nan")) for k, v in errs.items()}
    errors["per_layer"] = {k: [sum(v[l * Hkv:(l + 1) * Hkv]) / Hkv for l in range(L)] for k, v in errs.items() if v}
    return AMResult(emb, keys, values, betas if o.beta == "nnls" else None, idxs, poss, N, src, errors,
                    {"doc_s": t_doc, "fit_s": t_fit, "total_s": time.time() - t0}, asdict(o))


def _own_context(Qh, qkv, hh, n_tok, sel, D):
    """For the selected reference tokens (flat indices), the log-mass and output of attention over their own
    segment's tokens up to themselves (causal), for the g query heads stacked like the fitting queries.
    Tokens that are not segment tokens (appended document queries) get log-mass -inf and output 0."""
    g = Qh.shape[0]
    scale = 1.0 / math.sqrt(D)
    lse = torch.full((g, len(sel), 1), float("-inf"))
    out = torch.zeros(g, len(sel), D)
    off = 0
    for i, n in enumerate(n_tok):
        m = (sel >= off) & (sel < off + n)
        if m.any():
            loc = sel[m] - off
            Ks, Vs = qkv[i][1][hh], qkv[i][2][hh]
            Ss = (Qh[:, sel[m]] @ Ks.T) * scale                                    # [g, k, n]
            Ss = Ss.masked_fill(~(torch.arange(n)[None] <= loc[:, None])[None], float("-inf"))
            lse[:, m] = torch.logsumexp(Ss, -1, keepdim=True)
            out[:, m] = torch.softmax(Ss, -1) @ Vs
        off += n
    return lse.reshape(-1, 1), out.reshape(-1, D)


def _errors(model, errs, Qall, held_sel, qkv, n_tok, K, V, lay, g, N, shift):
    """Relative errors on the held-apart reference queries, per KV head:
    doc_before / doc_after: document-part output (normalised over the kept keys) with the kept tokens' own
    values / with the fitted values; total: the whole attention output of a segment token over
    [document or cartridge; the segment's tokens up to itself]; mass_ratio: compact mass / full mass."""
    if len(held_sel) == 0:
        return
    D = K.shape[-1]
    scale = 1.0 / math.sqrt(D)
    offs = [0]
    for n in n_tok:
        offs.append(offs[-1] + n)
    for hh, x in enumerate(lay):
        heads = slice(hh * g, (hh + 1) * g)
        Qh = Qall[heads][:, held_sel].reshape(-1, D)
        Sh = (Qh @ K[hh].T) * scale
        Oh = torch.softmax(Sh, 1) @ V[hh]
        Qhc = rope_rotate(model, Qh, -shift)
        Shc = (Qhc @ x["keys"].T) * scale + x["beta"]
        errs["doc_before"].append(rel_err(torch.softmax(Shc, 1) @ V[hh][x["idx"]], Oh))
        errs["doc_after"].append(rel_err(torch.softmax(Shc, 1) @ x["values"], Oh))
        errs["mass_ratio"].append(float(torch.exp(_lse_rows(Shc) - _lse_rows(Sh)).mean()))
        num, den = 0.0, 0.0
        for i in range(len(n_tok)):
            sel = held_sel[(held_sel >= offs[i]) & (held_sel < offs[i + 1])] - offs[i]
            if len(sel) == 0:
                continue
            Qr = qkv[i][0][heads][:, sel].reshape(-1, D)
            Ks, Vs = qkv[i][1][hh], qkv[i][2][hh]
            Ss = (Qr @ Ks.T) * scale
            vis = (torch.arange(Ks.shape[0])[None] <= sel[:, None]).repeat(g, 1)
            Ss = Ss.masked_fill(~vis, float("-inf"))
            full = torch.softmax(torch.cat([(Qr @ K[hh].T) * scale, Ss], 1), 1) @ torch.cat([V[hh], Vs])
            Qrc = rope_rotate(model, Qr, -shift)
            comp = torch.softmax(torch.cat([(Qrc @ x["keys"].T) * scale + x["beta"], Ss], 1), 1) @ \
                torch.cat([x["values"], Vs])
            num += float((comp - full).pow(2).sum())
            den += float(full.pow(2).sum())
        if den > 0:
            errs["total"].append(math.sqrt(num / den))


def to_prompt_embeddings(keys, values):
    """PEFT layout (spec A3.3): row t = [K_0 | V_0 | ... | K_{L-1} | V_{L-1}], each [H_kv, D] flattened."""
    p = keys[0].shape[1]
    cols = []
    for k, v in zip(keys, values):
        cols += [k.permute(1, 0, 2).reshape(p, -1), v.permute(1, 0, 2).reshape(p, -1)]
    return torch.cat(cols, dim=1).contiguous()
