"""Three small byte-level decoder LMs with one parameter budget, written from the HySparse paper
(arXiv 2602.03560) and the operator contract in docs/ops.md, not from the project's kernels, so the
PyTorch forward is an independent reference for the ONNX Runtime ops.

- ``dense``: Llama-style decoder (RMSNorm, RoPE, GQA, SwiGLU), full causal attention in every layer.
- ``hysparse``: the paper's hybrid. Full layers (``full_layers``) are ordinary attention that also
  act as the oracle: per token and KV head they score key blocks by the largest attention
  probability inside the block (max over the group's query heads) and select the top-K. Each
  sparse layer that follows has one query projection q' for two branches: SA attends to the selected
  blocks of the *preceding full layer's* keys and values (KV sharing), SWA to a sliding window of its
  own k'/v'. Each branch is its own softmax with a learnable sink in the denominator; a sigmoid gate
  per head, computed from the layer input, weighs the two.
- ``swa``: the hybrid sliding-window baseline with the same KV budget: the same full layers, and
  sliding-window attention (with a sink) of the same window in the other layers.

Two forwards compute the same function. ``forward_train`` (no cache, whole sequences) is written for
speed on CPU: the window branch works on query chunks, the SA branch gathers only the selected keys.
``forward`` (KV caches, attention mask, any S) materialises the masks the way the contract states
them and is what the ONNX agreement test and the exporters use. ``selftest`` checks that they agree.
"""
import math
from dataclasses import dataclass, field, asdict

import torch
from torch import nn
import torch.nn.functional as F

NEG_INF = float("-inf")


@dataclass
class ModelConfig:
    kind: str = "dense"            # dense | hysparse | swa
    vocab: int = 256               # bytes
    layers: int = 8
    hidden: int = 256
    heads: int = 8
    kv_heads: int = 2
    head_dim: int = 32
    ffn: int = 704
    rope_theta: float = 10000.0
    eps: float = 1e-5
    context: int = 2048
    full_layers: list = field(default_factory=lambda: [0, 4])
    block_size: int = 32
    top_k: int = 8
    window: int = 128

    @property
    def group(self):
        return self.heads // self.kv_heads

    def is_full(self, layer):
        return self.kind == "dense" or layer in self.full_layers

    def to_dict(self):
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x, cos, sin):
    return x * cos + rotate_half(x) * sin


def rope_tables(config, positions):
    """cos/sin [B, 1, S, D] for integer positions [B, S] (Hugging Face's non-interleaved RoPE)."""
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, config.head_dim, 2, dtype=torch.float32) / config.head_dim))
    freqs = positions[:, :, None].float() * inv_freq[None, None, :].to(positions.device)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos()[:, None], emb.sin()[:, None]


def softmax_with_sink(scores, sink):
    """Softmax over the last axis whose denominator also holds exp(sink) (gpt-oss style: the sink
    takes probability mass but carries no value). scores [..., H, S, N], sink [H]. A row with every
    score -inf gives all zeros."""
    shape = list(scores.shape)
    shape[-1] = 1
    sink_column = sink.view(*([1] * (scores.dim() - 3)), -1, 1, 1).expand(shape)
    probs = torch.softmax(torch.cat([scores, sink_column.to(scores.dtype)], dim=-1), dim=-1)
    return probs[..., :-1]


class FeedForward(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden, c.ffn, bias=False)
        self.up_proj = nn.Linear(c.hidden, c.ffn, bias=False)
        self.down_proj = nn.Linear(c.ffn, c.hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Attention(nn.Module):
    """Full causal GQA attention (dense layers, full layers, and the SWA baseline's window layers)."""

    def __init__(self, c, window=None):
        super().__init__()
        self.c = c
        self.window = window  # None: full attention; else sliding window of that many tokens (with a sink)
        self.q_proj = nn.Linear(c.hidden, c.heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.heads * c.head_dim, c.hidden, bias=False)
        if window is not None:
            self.sinks = nn.Parameter(torch.zeros(c.heads))

    def project(self, x, cos, sin):
        c = self.c
        b, s, _ = x.shape
        # contiguous [B, H, S, D]: the attention GEMMs then read K and V in place (a strided batch
        # makes torch.matmul copy K into a [D, S] layout that OpenBLAS multiplies 5x slower)
        q = self.q_proj(x).view(b, s, c.heads, c.head_dim).transpose(1, 2).contiguous()
        k = self.k_proj(x).view(b, s, c.kv_heads, c.head_dim).transpose(1, 2).contiguous()
        v = self.v_proj(x).view(b, s, c.kv_heads, c.head_dim).transpose(1, 2).contiguous()
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def grouped(q, c):
    """[B, Hq, S, D] -> [B, Hkv, G, S, D]: query heads of one KV head side by side."""
    b, _, s, d = q.shape
    return q.view(b, c.kv_heads, c.group, s, d)


class _SinkSoftmax(torch.autograd.Function):
    """Softmax with a sink over masked scores, factored for speed: returns p = softmax(scores + bias)
    and the per-row weight w = Σexp(s) / (Σexp(s) + exp(sink)) = sigmoid(L - sink) (L the row's
    logsumexp), so that attention with a sink is w · (p @ v). Unlike
    softmax(cat([scores, sink]))[..., :-1] it makes no copy of the [.., S, N] scores (the
    concatenation, the slice and their backward each cost a full pass on CPU), and the mask is added
    inside, in the one buffer that becomes p. Every row must hold a finite score (true of every
    training row: the window holds the token itself, and each query has at least one selected block
    at or before it). sink is broadcast to [..., S] by the caller; bias gets no gradient."""

    @staticmethod
    def forward(ctx, scores, bias, sink):
        probs = scores + bias
        top = probs.amax(-1, keepdim=True)
        probs.sub_(top).exp_()
        total = probs.sum(-1, keepdim=True)
        probs.div_(total)
        weight = torch.sigmoid((top + total.log()).squeeze(-1) - sink)
        ctx.save_for_backward(probs, weight)
        return probs, weight

    @staticmethod
    def backward(ctx, grad_probs, grad_weight):
        probs, weight = ctx.saved_tensors
        # d w / d s_j = w (1 - w) p_j (because dL/ds_j = p_j); d w / d sink = -w (1 - w)
        through_weight = grad_weight * weight * (1 - weight)
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        grad_scores.addcmul_(probs, through_weight[..., None])
        return grad_scores, None, -through_weight


_bias_cache = {}


def cached_bias(key, build):
    """Additive masks (0 visible, -inf hidden) depend only on shapes: build each once per process
    instead of once per layer and step (a fresh [T, T] allocation costs page faults on these VMs)."""
    if key not in _bias_cache:
        visible = build()
        _bias_cache[key] = torch.zeros(visible.shape, device=visible.device).masked_fill_(~visible, NEG_INF)
    return _bias_cache[key]


def causal_bias(start, end, groups, device):
    """[G·(end − start), end]: query rows start..end-1 against keys 0..end-1, causal, repeated for
    the G query heads folded into the rows (fold_groups)."""
    def visible():
        rows = torch.arange(start, end, device=device)[:, None]
        return (torch.arange(end, device=device)[None, :] <= rows).repeat(groups, 1)
    return cached_bias(("causal", start, end, groups, str(device)), visible)


def query_chunks(t, chunk):
    """Causal attention in query chunks: rows [start, end) need only keys [0, end), which skips the
    masked upper triangle (at 2k context with chunks of 256, 44 % of the QKᵀ and PV work)."""
    chunk = chunk or t
    return [(start, min(t, start + chunk)) for start in range(0, t, chunk)]


def fold_groups(q, c):
    """[B, Hq, S, D] -> [B, Hkv, G·S, D] with q scaled by 1/√D: the query heads of one KV head become
    rows of one matrix, so QKᵀ and PV are plain batched GEMMs over B·Hkv (a broadcast K over G makes
    torch.matmul copy and fall back to a slow batched kernel)."""
    b, _, s, d = q.shape
    return (q * (1.0 / math.sqrt(d))).reshape(b, c.kv_heads, c.group * s, d)


def full_attention_train(q, k, v, c, chunk=None):
    """Causal attention in query chunks (query_chunks); also returns, per chunk, (start, probabilities
    [B, Hkv, G, rows, end]) for the oracle."""
    b, hq, t, d = q.shape
    qg = fold_groups(q, c).view(b, c.kv_heads, c.group, t, d)
    outs, probs = [], []
    for start, end in query_chunks(t, chunk):
        rows = end - start
        scores = torch.matmul(qg[:, :, :, start:end].reshape(b, c.kv_heads, c.group * rows, d),
                              k[:, :, :end].transpose(-1, -2))
        # in place on the matmul's own output (its backward does not read it); on a view of it
        # autograd would copy the whole tensor back in the backward pass
        p = torch.softmax(scores.add_(causal_bias(start, end, c.group, q.device)), dim=-1)
        outs.append(torch.matmul(p, v[:, :, :end]).view(b, c.kv_heads, c.group, rows, d))
        probs.append((start, p.view(b, c.kv_heads, c.group, rows, end)))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=3)
    return out.view(q.shape), probs


def sink_attention(scores, bias, sinks, values, c):
    """Attention with a sink: scores [B, Hkv, ..., G, S, N] (q already scaled) plus the additive
    `bias` (broadcast), sinks [Hq], values [B, Hkv, ..., N, D]. Returns [B, Hkv, ..., G·S, D]."""
    shape = scores.shape
    sink = sinks.view(1, c.kv_heads, *([1] * (len(shape) - 5)), c.group, 1).expand(shape[:-1])
    probs, weight = _SinkSoftmax.apply(scores, bias, sink)
    flat = probs.reshape(*shape[:-3], shape[-3] * shape[-2], shape[-1])
    return torch.matmul(flat, values) * weight.reshape(*shape[:-3], -1, 1)


def window_attention_train(q, k, v, sinks, window, c):
    """Sliding-window attention (keys t-w < j <= t) with a sink, on query chunks of `window` tokens so
    the work is O(T·w) instead of O(T²)."""
    b, hq, t, d = q.shape
    chunk = window
    n_chunks = (t + chunk - 1) // chunk
    padded = n_chunks * chunk
    pad_q = padded - t
    # [B, Hkv, n, G, chunk, D]: the group's heads of one chunk are rows of one GEMM
    qg = F.pad(q * (1.0 / math.sqrt(d)), (0, 0, 0, pad_q)).view(b, c.kv_heads, c.group, n_chunks, chunk, d)
    qg = qg.transpose(2, 3).reshape(b, c.kv_heads, n_chunks, c.group * chunk, d)
    # Keys for chunk n are positions [n·chunk − w, n·chunk + chunk): pad w in front, then unfold.
    kp = F.pad(k, (0, 0, window, pad_q))
    vp = F.pad(v, (0, 0, window, pad_q))
    span = chunk + window
    kc = kp.unfold(2, span, chunk)  # [B, Hkv, n, D, span]
    vc = vp.unfold(2, span, chunk).transpose(-1, -2)  # [B, Hkv, n, span, D]
    scores = torch.matmul(qg, kc).view(b, c.kv_heads, n_chunks, c.group, chunk, span)

    def visible():
        qpos = torch.arange(padded, device=q.device).view(n_chunks, 1, chunk, 1)
        kpos = (torch.arange(n_chunks, device=q.device).view(n_chunks, 1, 1, 1) * chunk - window
                + torch.arange(span, device=q.device).view(1, 1, 1, span))
        return (kpos <= qpos) & (kpos > qpos - window) & (kpos >= 0)  # [n, 1, chunk, span]

    bias = cached_bias(("window", padded, window, str(q.device)), visible)
    out = sink_attention(scores, bias, sinks, vc, c)  # [B, Hkv, n, G·chunk, D]
    out = out.view(b, c.kv_heads, n_chunks, c.group, chunk, d).transpose(2, 3)
    return out.reshape(b, hq, padded, d)[:, :, :t]


def select_blocks(probs, c, query_positions, key_valid=None):
    """The oracle. probs [B, Hkv, G, S, T] (softmax over valid keys, 0 elsewhere); query_positions [S]
    absolute positions of the rows. Returns int64 indices [B, Hkv, S, K] of the top-K eligible blocks
    in ascending order, -1 for unused slots. Eligible: the block holds a valid key (j <= t and, when
    key_valid [B, T] is given, unmasked)."""
    b, hkv, g, s, t = probs.shape
    bs = c.block_size
    nb = (t + bs - 1) // bs
    padded = F.pad(probs.detach(), (0, nb * bs - t))
    scores = padded.view(b, hkv, g, s, nb, bs).amax(dim=-1).amax(dim=2)  # [B, Hkv, S, nb]
    keys = torch.arange(t, device=probs.device)
    valid = keys[None, :] <= query_positions[:, None]  # [S, T]
    valid = valid[None].expand(b, s, t)
    if key_valid is not None:
        valid = valid & key_valid[:, None, :].bool()
    valid = F.pad(valid, (0, nb * bs - t)).view(b, s, nb, bs).any(dim=-1)  # [B, S, nb]
    eligible = valid[:, None].expand(b, hkv, s, nb)
    k = min(c.top_k, nb)
    # Ineligible blocks rank below every eligible one (even a probability that underflowed to 0);
    # ties go to the lower block index (a stable descending sort).
    ranked = torch.where(eligible, scores, torch.full_like(scores, -1.0))
    order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices[..., :k]
    chosen_eligible = torch.gather(eligible, -1, order)
    order = torch.where(chosen_eligible, order, torch.full_like(order, nb))  # unused slots sort last
    order = torch.sort(order, dim=-1).values
    order = torch.where(order == nb, torch.full_like(order, -1), order)
    if k < c.top_k:
        order = F.pad(order, (0, c.top_k - k), value=-1)
    return order


def selected_positions(indices, c):
    """Block indices [B, Hkv, S, K] -> key positions [B, Hkv, S, K·bs] and whether each is a real
    selection (-1 slots are not)."""
    bs = c.block_size
    offsets = torch.arange(bs, device=indices.device)
    positions = indices[..., None] * bs + offsets
    used = (indices >= 0)[..., None].expand_as(positions)
    return positions.flatten(-2), used.flatten(-2)


def selected_mask(indices, t, c):
    """Block indices [B, Hkv, S, K] -> bool [B, Hkv, S, T]: key j is in a selected block."""
    b, hkv, s, k = indices.shape
    nb = (t + c.block_size - 1) // c.block_size
    blocks = torch.zeros(b, hkv, s, nb + 1, dtype=torch.bool, device=indices.device)
    blocks.scatter_(-1, torch.where(indices < 0, torch.full_like(indices, nb), indices), True)
    return blocks[..., :nb].repeat_interleave(c.block_size, dim=-1)[..., :t]


class SparseAttention(nn.Module):
    """A HySparse sparse layer: q' for both branches, k'/v' for the window, sinks and per-head gates.
    The SA branch reads the preceding full layer's keys and values."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.q_proj = nn.Linear(c.hidden, c.heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=False)  # k' (window branch)
        self.v_proj = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=False)  # v' (window branch)
        self.o_proj = nn.Linear(c.heads * c.head_dim, c.hidden, bias=False)
        self.gate_proj = nn.Linear(c.hidden, 2 * c.heads, bias=True)  # SA logits, then SWA logits
        self.sinks = nn.Parameter(torch.zeros(2, c.heads))  # [SA, SWA]

    project = Attention.project

    def combine(self, x, o_sa, o_swa):
        c = self.c
        gates = torch.sigmoid(self.gate_proj(x))  # [B, S, 2H]
        g_sa = gates[..., : c.heads].transpose(1, 2)[..., None]
        g_swa = gates[..., c.heads:].transpose(1, 2)[..., None]
        return g_sa * o_sa + g_swa * o_swa


def sa_bias(indices, t, c):
    """Additive mask [B, Hkv, 1, T, T] of the keys the SA branch may read in training: in a selected
    block and not in the future. Built once per full layer and read by the sparse layers after it."""
    visible = selected_mask(indices, t, c) & torch.ones(t, t, dtype=torch.bool, device=indices.device).tril()
    return torch.zeros(visible.shape, device=indices.device).masked_fill_(~visible, NEG_INF)[:, :, None]


def sa_attention_train(q, shared_k, shared_v, indices, sinks, c, gather_from=1024, bias=None, chunk=None):
    """Attention over the selected blocks. From `gather_from` tokens on it gathers the K·bs selected
    keys per (row, KV head, token), O(T·K·bs); below that a masked dense product in causal query
    chunks is faster on CPU (index_select's backward is a scatter). `bias` (from sa_bias) may be
    passed in so the sparse layers that share one full layer's selection build the mask once."""
    b, hq, t, d = q.shape
    if t < gather_from:
        if bias is None:
            bias = sa_bias(indices, t, c)
        qg = fold_groups(q, c).view(b, c.kv_heads, c.group, t, d)
        outs = []
        for start, end in query_chunks(t, chunk):
            rows = end - start
            scores = torch.matmul(qg[:, :, :, start:end].reshape(b, c.kv_heads, c.group * rows, d),
                                  shared_k[:, :, :end].transpose(-1, -2)).view(b, c.kv_heads, c.group, rows, end)
            out = sink_attention(scores, bias[..., start:end, :end], sinks, shared_v[:, :, :end], c)
            outs.append(out.view(b, c.kv_heads, c.group, rows, d))
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=3)).view(q.shape)
    positions, used = selected_positions(indices, c)  # [B, Hkv, T, M]
    m = positions.shape[-1]
    query_pos = torch.arange(t, device=q.device).view(1, 1, t, 1)
    valid = used & (positions <= query_pos)
    flat = positions.clamp(0, t - 1) + (torch.arange(b * c.kv_heads, device=q.device) * t).view(b, c.kv_heads, 1, 1)
    ks = shared_k.reshape(b * c.kv_heads * t, d).index_select(0, flat.reshape(-1)).view(b, c.kv_heads, t, m, d)
    vs = shared_v.reshape(b * c.kv_heads * t, d).index_select(0, flat.reshape(-1)).view(b, c.kv_heads, t, m, d)
    # Per (row, KV head, token): the G query heads against that token's M gathered keys.
    qg = fold_groups(q, c).view(b, c.kv_heads, c.group, t, d).transpose(2, 3)  # [B, Hkv, T, G, D]
    scores = torch.matmul(qg, ks.transpose(-1, -2)).view(b, c.kv_heads, t, c.group, 1, m)
    bias = torch.zeros(valid.shape, device=q.device).masked_fill_(~valid, NEG_INF).view(b, c.kv_heads, t, 1, 1, m)
    out = sink_attention(scores, bias, sinks, vs, c)  # [B, Hkv, T, G, D]
    return out.transpose(2, 3).reshape(b, hq, t, d)


class Layer(nn.Module):
    def __init__(self, c, index):
        super().__init__()
        self.index = index
        self.full = c.is_full(index)
        self.input_layernorm = RMSNorm(c.hidden, c.eps)
        if self.full:
            self.self_attn = Attention(c)
        elif c.kind == "hysparse":
            self.self_attn = SparseAttention(c)
        else:
            self.self_attn = Attention(c, window=c.window)
        self.post_attention_layernorm = RMSNorm(c.hidden, c.eps)
        self.mlp = FeedForward(c)


class ByteLM(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        if c.kind not in ("dense", "hysparse", "swa"):
            raise ValueError(f"unknown model kind '{c.kind}'")
        if c.kind != "dense" and 0 not in c.full_layers:
            raise ValueError("layer 0 must be a full layer: sparse layers need a preceding oracle")
        self.c = c
        self.embed_tokens = nn.Embedding(c.vocab, c.hidden)
        self.layers = nn.ModuleList([Layer(c, i) for i in range(c.layers)])
        self.norm = RMSNorm(c.hidden, c.eps)
        self.lm_head = nn.Linear(c.hidden, c.vocab, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def parameter_count(self):
        return sum(p.numel() for p in self.parameters())

    # ---- training forward: whole sequences, no cache, no padding ----
    def forward_train(self, ids, chunk=256, gather_from=1024):
        """Logits [B, T, V] for whole sequences. `chunk`: query rows per causal chunk of the full and
        SA attention (None: one chunk); `gather_from`: the length from which the SA branch gathers
        the selected keys instead of masking (measured on the build machines, README "Throughput")."""
        c = self.c
        b, t = ids.shape
        positions = torch.arange(t, device=ids.device)[None].expand(b, t)
        cos, sin = rope_tables(c, positions)
        x = self.embed_tokens(ids)
        shared = None  # (k, v, indices) of the latest full layer
        for layer in self.layers:
            h = layer.input_layernorm(x)
            attn = layer.self_attn
            q, k, v = attn.project(h, cos, sin)
            if layer.full:
                out, probs = full_attention_train(q, k, v, c, chunk)
                if c.kind == "hysparse":
                    with torch.no_grad():
                        indices = torch.cat([select_blocks(p, c, torch.arange(start, start + p.shape[3], device=ids.device))
                                             for start, p in probs], dim=2)
                        bias = sa_bias(indices, t, c) if t < gather_from else None
                    shared = (k, v, indices, bias)
                del probs  # the chunks stay alive only through autograd
            elif c.kind == "hysparse":
                o_sa = sa_attention_train(q, shared[0], shared[1], shared[2], attn.sinks[0], c,
                                          gather_from=gather_from, bias=shared[3], chunk=chunk)
                o_swa = window_attention_train(q, k, v, attn.sinks[1], c.window, c)
                out = attn.combine(h, o_sa, o_swa)
            else:
                out = window_attention_train(q, k, v, attn.sinks, c.window, c)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(b, t, c.heads * c.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.lm_head(self.norm(x))

    # ---- reference forward: caches and attention mask, as the ONNX models compute ----
    def cache_lengths(self, past_length):
        """Length of each layer's cache after `past_length` tokens: full layers keep everything;
        window layers (sparse / SWA) keep the last `window` tokens."""
        return [past_length if self.c.is_full(i) else min(self.c.window, past_length) for i in range(self.c.layers)]

    def forward(self, ids, attention_mask, past):
        """ids [B, S]; attention_mask int64 [B, T] over cache positions (T = P + S; 0 = padding);
        past: list of (key, value) [B, Hkv, len, D] per layer (full layers: P; window layers
        min(w, P)). Returns logits [B, S, V], presents, and the oracle's indices per full layer."""
        c = self.c
        b, s = ids.shape
        t = attention_mask.shape[1]
        p = t - s
        # Positions as Hugging Face derives them from the mask; padding tokens get position 1.
        positions = attention_mask.long().cumsum(-1) - 1
        positions = positions.masked_fill(attention_mask == 0, 1)[:, -s:]
        cos, sin = rope_tables(c, positions)
        key_valid = attention_mask.bool()  # [B, T]
        qpos = torch.arange(p, t, device=ids.device)  # absolute positions of the new tokens
        kpos = torch.arange(t, device=ids.device)
        causal = (kpos[None, :] <= qpos[:, None])[None] & key_valid[:, None, :]  # [B, S, T]
        in_window = causal & (kpos[None, None, :] > qpos[None, :, None] - c.window)
        x = self.embed_tokens(ids)
        presents, all_indices = [], []
        shared = None
        for layer in self.layers:
            h = layer.input_layernorm(x)
            attn = layer.self_attn
            q, k, v = attn.project(h, cos, sin)
            past_k, past_v = past[layer.index]
            if layer.full:
                present_k, present_v = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
                scores = torch.matmul(grouped(q, c), present_k[:, :, None].transpose(-1, -2)) / math.sqrt(c.head_dim)
                scores = scores.masked_fill(~causal[:, None, None], NEG_INF)
                probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # padding queries: no valid key
                out = torch.matmul(probs, present_v[:, :, None]).reshape(q.shape)
                if c.kind == "hysparse":
                    indices = select_blocks(probs, c, qpos, key_valid)
                    shared = (present_k, present_v, indices)
                    all_indices.append(indices)
            else:
                # Window layers keep only their last `window` tokens: positions [t - len, t).
                cache_k = torch.cat([past_k, k], 2)
                cache_v = torch.cat([past_v, v], 2)
                own_start = t - cache_k.shape[2]
                own_window = in_window[:, :, own_start:]
                if c.kind == "hysparse":
                    o_swa = self._masked_attention(q, cache_k, cache_v, own_window, attn.sinks[1])
                    sk, sv, indices = shared
                    selected = selected_mask(indices, t, c) & causal[:, None]
                    o_sa = self._masked_attention(q, sk, sv, selected, attn.sinks[0], per_kv_head=True)
                    out = attn.combine(h, o_sa, o_swa)
                else:
                    out = self._masked_attention(q, cache_k, cache_v, own_window, attn.sinks)
                keep = min(c.window, cache_k.shape[2])
                present_k, present_v = cache_k[:, :, -keep:], cache_v[:, :, -keep:]
            presents.append((present_k, present_v))
            x = x + attn.o_proj(out.transpose(1, 2).reshape(b, s, c.heads * c.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.lm_head(self.norm(x)), presents, all_indices

    def _masked_attention(self, q, k, v, visible, sinks, per_kv_head=False):
        """Softmax attention with a sink over the keys `visible` marks ([B, S, L] or per KV head
        [B, Hkv, S, L]); q [B, Hq, S, D], k/v [B, Hkv, L, D]."""
        c = self.c
        scores = torch.matmul(grouped(q, c), k[:, :, None].transpose(-1, -2)) / math.sqrt(c.head_dim)
        mask = visible[:, :, None] if per_kv_head else visible[:, None, None]
        scores = scores.masked_fill(~mask, NEG_INF)
        sink = sinks.view(c.kv_heads, c.group)[None, :, :, None, None].expand(*scores.shape[:-1], 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
        return torch.matmul(probs, v[:, :, None]).reshape(q.shape)

    def empty_past(self, batch, device=None):
        c = self.c
        shape = (batch, c.kv_heads, 0, c.head_dim)
        return [(torch.zeros(shape, device=device), torch.zeros(shape, device=device)) for _ in range(c.layers)]


TRAIN_VARIANTS = [{"chunk": 16}, {"chunk": 12, "gather_from": 0}]


def selftest(kind, seed=0):
    """The training forward and the reference forward agree (no cache, no padding), and a prefill
    followed by decode steps with caches reproduces the one-shot logits."""
    torch.manual_seed(seed)
    c = ModelConfig(kind=kind, layers=4, hidden=64, heads=4, kv_heads=2, head_dim=16, ffn=96,
                    full_layers=[0, 2], block_size=4, top_k=3, window=6, context=64)
    model = ByteLM(c).eval()
    for p in model.parameters():  # trained-looking scales so selections are not ties
        p.data.normal_(0, 0.3)
    ids = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        train_logits = model.forward_train(ids)
        mask = torch.ones(2, 40, dtype=torch.int64)
        ref_logits, _, _ = model.forward(ids, mask, model.empty_past(2))
        assert torch.allclose(train_logits, ref_logits, atol=1e-4), (kind, (train_logits - ref_logits).abs().max())
        for variant in TRAIN_VARIANTS:  # causal query chunks (uneven last chunk), gathered SA keys
            other = model.forward_train(ids, **variant)
            assert torch.allclose(other, ref_logits, atol=1e-4), (kind, variant, (other - ref_logits).abs().max())
        if kind == "hysparse":  # the gathering SA path computes the same as the masked one
            q = torch.randn(2, 4, 40, 16); k = torch.randn(2, 2, 40, 16); v = torch.randn(2, 2, 40, 16)
            probs = torch.softmax(torch.randn(2, 2, 2, 40, 40).masked_fill(
                ~torch.ones(40, 40, dtype=torch.bool).tril(), NEG_INF), -1)
            idx = select_blocks(probs, c, torch.arange(40))
            sinks = torch.randn(4)
            with torch.enable_grad():
                inputs = [x.requires_grad_() for x in (q, k, v, sinks)]
                masked = sa_attention_train(q, k, v, idx, sinks, c, gather_from=1 << 30)
                masked_grads = torch.autograd.grad(masked.square().sum(), inputs)
                gathered = sa_attention_train(q, k, v, idx, sinks, c, gather_from=0)
                gathered_grads = torch.autograd.grad(gathered.square().sum(), inputs)
            assert torch.allclose(masked, gathered, atol=1e-5), (masked - gathered).abs().max()
            for a, g in zip(masked_grads, gathered_grads):
                assert torch.allclose(a, g, atol=1e-4), (a - g).abs().max()
        logits, past, _ = model.forward(ids[:, :30], mask[:, :30], model.empty_past(2))
        steps = [logits]
        for i in range(30, 40):
            step, past, _ = model.forward(ids[:, i:i + 1], mask[:, :i + 1], past)
            steps.append(step)
        incremental = torch.cat(steps, dim=1)
        assert torch.allclose(incremental, ref_logits, atol=1e-4), (kind, (incremental - ref_logits).abs().max())
    # The training forward's backward (the sink softmax has a hand-written one) gives the reference's
    # gradients for every parameter.
    def gradients(forward):
        model.zero_grad()
        F.cross_entropy(forward().reshape(-1, c.vocab), ids.roll(-1, 1).reshape(-1)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reference = gradients(lambda: model.forward(ids, mask, model.empty_past(2))[0])
    for variant in [{}] + TRAIN_VARIANTS:
        fast = gradients(lambda: model.forward_train(ids, **variant))
        assert fast.keys() == reference.keys(), (kind, fast.keys() ^ reference.keys())
        for n in fast:
            assert torch.allclose(fast[n], reference[n], atol=1e-5, rtol=1e-3), \
                (kind, variant, n, (fast[n] - reference[n]).abs().max())
    scores = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    sink = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, k: _SinkSoftmax.apply(s, torch.zeros(5, dtype=s.dtype), k), (scores, sink))
    return (train_logits - ref_logits).abs().max().item()


if __name__ == "__main__":
    for kind in ("dense", "hysparse", "swa"):
        print(kind, "train vs reference forward max |diff|", selftest(kind))
