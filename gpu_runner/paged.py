"""A preallocated paged KV cache and one batched forward pass over it.

The physical cache mirrors the policy's KV accountant block for block: a pool of
``num_blocks`` x ``block_size`` token slots per layer, allocated once; a request holding
``t`` tokens owns ``ceil(t / block_size)`` blocks, exactly what the accountant counts, so
the pool cannot overflow while the accountant does not. Nothing is concatenated while
decoding; each step writes the new tokens' K/V into their slots.

One step runs every piece of work of a plan in a single pass through the layers: the new
tokens of all decode rows and prefill chunks are packed into one ``[N, hidden]`` matrix
for the projections and the MLP (no padding), and attention is computed per kind:

* decode rows: batched attention over each row's cached context, gathered from the
  pool into a padded ``[rows, longest context]`` block. Rows are first grouped by
  context length (a new group when a row's context is under ``GROUP_RATIO`` of its
  group's longest *and* at least ``GROUP_MIN_GAP`` tokens shorter, at most ``MAX_GROUPS``
  groups: an extra group costs one more attention call per layer) so the work tracks the
  *sum* of the contexts, as paged attention on a GPU does and as the simulator prices it,
  rather than batch x longest context. (With a 384-token minimum gap, a burst's decode batch
  of contexts 20-1031 padded its shortest rows to ~250 tokens, twice their mean; the grid's
  evenly spread batches padded far less, so the run's decode steps cost 1.07x their fitted
  price in a syncintellects run; with 32, 1.00x.) (A fully vectorised segment softmax
  was measured 20-100x slower on CPU: scatter-adds are single-threaded.) On a CPU a group
  is then cut into row blocks whose gathered K is at most ``CPU_DECODE_BLOCK_BYTES`` (one
  attention call each, as the padded group below has ``PAD_ROWS``): one call over 118 rows x
  1,031 tokens gathered 16 MB of K and as much of V per layer, out of the caches, and such a
  step cost 0-6% more than one of the same rows and total context spread over [k/2, 3k/2]
  (several smaller groups), so a batch's price depended on how alike its contexts were, which
  the cost model does not see. In blocks of 2 MiB the two cost the same within the noise (and
  both 6-15% less); on a GPU the gather stays one call per group.
* prefill chunks: one causal attention call per chunk over its cached prefix and itself;
* a padded prefill group (static batching): the chunks left-padded to a common length and
  run as one batched attention call, padding included, as a padded ``generate()`` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

GROUP_RATIO = 0.75
GROUP_MIN_GAP = 32
MAX_GROUPS = 8
CPU_DECODE_BLOCK_BYTES = 2 << 20  # gathered K per decode attention call on a CPU (None: no cut)
PAD_ROWS = 16  # prompts of 1024 tokens per attention call of a left-padded group (more when shorter)


class PagedKV:
    """Per-layer K and V pools of ``num_blocks * block_size`` token slots, with block tables."""

    def __init__(self, n_layers: int, num_blocks: int, block_size: int, n_kv_heads: int, head_dim: int,
                 dtype, device):
        self.block_size = block_size
        self.num_blocks = num_blocks
        size = (n_layers, num_blocks * block_size, n_kv_heads, head_dim)
        self.k = torch.zeros(size, dtype=dtype, device=device)
        self.v = torch.zeros(size, dtype=dtype, device=device)
        self._free = list(range(num_blocks - 1, -1, -1))
        self.tables: dict[int, list[int]] = {}
        self._flat: dict[int, np.ndarray] = {}  # pool slot of every position the request's blocks cover
        self._offsets = np.arange(block_size, dtype=np.int64)

    def ensure(self, rid: int, tokens: int) -> None:
        """Own enough blocks for ``tokens`` tokens of request ``rid``."""
        table = self.tables.setdefault(rid, [])
        need = -(-tokens // self.block_size) - len(table)
        if need > len(self._free):
            raise RuntimeError(f"physical KV pool exhausted growing request {rid} to {tokens} tokens "
                               f"({len(self._free)} blocks free); the accountant and the pool disagree")
        if need <= 0:
            return
        new = [self._free.pop() for _ in range(need)]
        table.extend(new)
        flat = (np.asarray(new, dtype=np.int64)[:, None] * self.block_size + self._offsets).ravel()
        old = self._flat.get(rid)
        self._flat[rid] = flat if old is None else np.concatenate([old, flat])

    def release(self, rid: int) -> None:
        self._free.extend(reversed(self.tables.pop(rid, [])))
        self._flat.pop(rid, None)

    def slots(self, rid: int, start: int, end: int) -> np.ndarray:
        """Flat pool indices of positions ``[start, end)`` of request ``rid`` (a view)."""
        return self._flat[rid][start:end]

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - len(self._free)


@dataclass
class StepInputs:
    """The packed work of one step (built by :func:`pack`)."""

    ids: torch.Tensor              # [N] token ids (padding included)
    positions: torch.Tensor        # [N]
    write_rows: torch.Tensor       # rows of the N tokens whose K/V are cached
    write_slots: torch.Tensor      # their pool slots
    n_decode: int                  # decode rows are rows 0..n_decode-1
    dec_groups: list = field(default_factory=list)  # (rows [Bg], slots [Bg, Lg], key mask [Bg,1,1,Lg] | None)
    chunks: list = field(default_factory=list)  # (row_start, C, gather slots [K0 + C], K0)
    pad_group: tuple | None = None  # (row_start, R, P, key_mask [R, P]) left-padded prefill group
    logit_rows: torch.Tensor | None = None   # rows whose next-token logits are needed


def pack(kv: PagedKV, decode: list[tuple[int, int, int]], chunks: list[tuple[int, list[int], int]],
         pad_to: int, device) -> StepInputs:
    """Pack one step.

    ``decode``: (request, input token, position) per decode row; the row's context is
    positions 0..position. ``chunks``: (request, token ids, tokens already cached). Blocks
    must already be ensured in ``kv``. With ``pad_to`` > 0 every chunk starting at position
    0 joins the left-padded group.
    """
    ids: list[int] = []
    pos: list[int] = []
    w_rows: list[np.ndarray] = []
    w_slots: list[np.ndarray] = []
    logit_rows: list[int] = []
    n_dec = len(decode)
    out = StepInputs(ids=None, positions=None, write_rows=None, write_slots=None, n_decode=n_dec)
    if n_dec:
        lengths = np.empty(n_dec, dtype=np.int64)
        for j, (rid, tok, p) in enumerate(decode):
            ids.append(tok)
            pos.append(p)
            lengths[j] = p + 1
            w_slots.append(kv.slots(rid, p, p + 1))
        w_rows.append(np.arange(n_dec, dtype=np.int64))
        logit_rows.extend(range(n_dec))
        out.dec_groups = _decode_groups(kv, decode, lengths, device)
    padded = [c for c in chunks if pad_to > 0 and c[2] == 0]
    loose = [c for c in chunks if not (pad_to > 0 and c[2] == 0)]
    for rid, toks, k0 in loose:
        start, c = len(ids), len(toks)
        ids.extend(toks)
        pos.extend(range(k0, k0 + c))
        s = kv.slots(rid, 0, k0 + c)
        w_rows.append(np.arange(start, start + c, dtype=np.int64))
        w_slots.append(s[k0:])
        out.chunks.append((start, c, torch.from_numpy(s).to(device), k0))
        logit_rows.append(start + c - 1)
    if padded:
        start, r = len(ids), len(padded)
        p_len = max(pad_to, max(len(t) for _, t, _ in padded))
        mask = np.zeros((r, p_len), dtype=bool)
        for j, (rid, toks, _) in enumerate(padded):
            c = len(toks)
            lead = p_len - c
            ids.extend([0] * lead + list(toks))
            pos.extend([0] * lead + list(range(c)))
            mask[j, lead:] = True
            w_rows.append(np.arange(start + j * p_len + lead, start + (j + 1) * p_len, dtype=np.int64))
            w_slots.append(kv.slots(rid, 0, c))
            logit_rows.append(start + (j + 1) * p_len - 1)
        out.pad_group = (start, r, p_len, torch.from_numpy(mask).to(device))
    out.ids = torch.tensor(ids, dtype=torch.long, device=device)
    out.positions = torch.tensor(pos, dtype=torch.long, device=device)
    out.write_rows = torch.from_numpy(np.concatenate(w_rows)).to(device)
    out.write_slots = torch.from_numpy(np.concatenate(w_slots)).to(device)
    out.logit_rows = torch.tensor(logit_rows, dtype=torch.long, device=device)
    return out


def _context_groups(lengths: np.ndarray) -> list[list[int]]:
    """Decode rows (indices into ``lengths``) grouped by context length, longest first (module docstring)."""
    order = np.argsort(-lengths, kind="stable")
    groups: list[list[int]] = []
    for j in order.tolist():
        top = lengths[groups[-1][0]] if groups else 0
        if groups and (lengths[j] >= min(GROUP_RATIO * top, top - GROUP_MIN_GAP) or len(groups) == MAX_GROUPS):
            groups[-1].append(j)
        else:
            groups.append([j])
    return groups


def _row_blocks(groups: list[list[int]], lengths: np.ndarray, max_tokens: int | None) -> list[list[int]]:
    """Each group cut into consecutive row blocks of at most ``max_tokens`` gathered tokens (rows x the block's
    longest context; a row longer than that is a block of its own); ``None``: the groups unchanged."""
    if not max_tokens:
        return groups
    blocks = []
    for g in groups:
        cur: list[int] = []
        for j in g:
            if cur and (len(cur) + 1) * int(lengths[cur[0]]) > max_tokens:
                blocks.append(cur)
                cur = []
            cur.append(j)
        blocks.append(cur)
    return blocks


def _decode_groups(kv: PagedKV, decode, lengths: np.ndarray, device) -> list:
    cap = None
    if CPU_DECODE_BLOCK_BYTES and torch.device(device).type == "cpu":
        cap = max(1, CPU_DECODE_BLOCK_BYTES // (kv.k.shape[2] * kv.k.shape[3] * kv.k.element_size()))
    out = []
    for g in _row_blocks(_context_groups(lengths), lengths, cap):
        width = int(lengths[g[0]])
        slots = np.zeros((len(g), width), dtype=np.int64)
        for k, j in enumerate(g):
            slots[k, :lengths[j]] = kv.slots(decode[j][0], 0, int(lengths[j]))
        ragged = bool((lengths[g] < width).any())
        mask = None
        if ragged:
            mask = torch.from_numpy(np.arange(width)[None, :] < lengths[g][:, None]).view(len(g), 1, 1, width).to(device)
        out.append((torch.tensor(g, dtype=torch.long, device=device), torch.from_numpy(slots).to(device), mask))
    return out


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


@torch.no_grad()
def forward(model, kv: PagedKV, inp: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one packed step through a Llama-architecture model; returns (logits, last hidden) of ``logit_rows``."""
    base = model.model
    cfg = model.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    groups = n_heads // n_kv
    scale = hd ** -0.5
    n = inp.ids.shape[0]
    h = base.embed_tokens(inp.ids)
    cos, sin = base.rotary_emb(h, inp.positions.unsqueeze(0))
    cos, sin = cos[0].unsqueeze(1), sin[0].unsqueeze(1)  # [N, 1, D]
    for li, layer in enumerate(base.layers):
        att = layer.self_attn
        x = layer.input_layernorm(h)
        q = att.q_proj(x).view(n, n_heads, hd)
        k = att.k_proj(x).view(n, n_kv, hd)
        v = att.v_proj(x).view(n, n_kv, hd)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        kp, vp = kv.k[li], kv.v[li]
        kp.index_copy_(0, inp.write_slots, k.index_select(0, inp.write_rows))
        vp.index_copy_(0, inp.write_slots, v.index_select(0, inp.write_rows))
        o = torch.empty_like(q)
        for rows, slots, mask in inp.dec_groups:
            bg, width = slots.shape
            flat = slots.view(-1)
            kg = kp.index_select(0, flat).view(bg, width, n_kv, hd).transpose(1, 2)
            vg = vp.index_select(0, flat).view(bg, width, n_kv, hd).transpose(1, 2)
            qg = q.index_select(0, rows).unsqueeze(2)  # [Bg, H, 1, D]
            og = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask, scale=scale, enable_gqa=groups > 1)
            o[rows] = og[:, :, 0]
        for start, c, slots, k0 in inp.chunks:
            qc = q[start:start + c].transpose(0, 1).unsqueeze(0)          # [1, H, C, D]
            kc = kp.index_select(0, slots).transpose(0, 1).unsqueeze(0)   # [1, Hkv, K0 + C, D]
            vc = vp.index_select(0, slots).transpose(0, 1).unsqueeze(0)
            if k0 == 0:
                oc = F.scaled_dot_product_attention(qc, kc, vc, is_causal=True, scale=scale, enable_gqa=groups > 1)
            else:  # query i sees keys 0..k0+i (bottom-right aligned causal mask)
                m = torch.ones(c, k0 + c, dtype=torch.bool, device=q.device).tril(k0)
                oc = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=m, scale=scale, enable_gqa=groups > 1)
            o[start:start + c] = oc[0].transpose(0, 1)
        if inp.pad_group is not None:
            start, r, p, keep = inp.pad_group
            qg = q[start:start + r * p].view(r, p, n_heads, hd).transpose(1, 2)
            kg = k[start:start + r * p].view(r, p, n_kv, hd).transpose(1, 2)
            vg = v[start:start + r * p].view(r, p, n_kv, hd).transpose(1, 2)
            causal = torch.ones(p, p, dtype=torch.bool, device=q.device).tril()
            eye = torch.eye(p, dtype=torch.bool, device=q.device)
            og = torch.empty_like(qg)
            # PAD_ROWS prompts per call: one call over 118 prompts of 1024 tokens needed ~2 GB of scores,
            # which the allocator maps afresh every time, and such a step took 2.6 s in some runs and 4.5-10 s
            # in others; each row's attention is independent, so the blocks compute the same thing
            rows_per_call = max(1, PAD_ROWS * 1024 * 1024 // (p * p))
            for i in range(0, r, rows_per_call):
                j = min(r, i + rows_per_call)
                # pad keys are hidden; a pad query still sees itself so no row is all -inf (no NaN)
                m = (causal & keep[i:j, None, :]) | eye
                og[i:j] = F.scaled_dot_product_attention(qg[i:j], kg[i:j], vg[i:j], attn_mask=m.unsqueeze(1),
                                                         scale=scale, enable_gqa=groups > 1)
            o[start:start + r * p] = og.transpose(1, 2).reshape(r * p, n_heads, hd)
        h = h + att.o_proj(o.view(n, n_heads * hd))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    last = base.norm(h.index_select(0, inp.logit_rows))
    return model.lm_head(last), last
