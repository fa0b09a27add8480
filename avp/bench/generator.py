"""``avp bench generator``: AR sampling speed with and without the KV cache, training throughput, and (on a GPU) the
time to generate a 10k-point avatar with the base configuration.

- *KV cache vs recompute*, same model, same run: the sampler generates ``--tokens`` tokens with the cache (timed in
  full; the per-token time of the last 256 steps is the "at N tokens" figure). Recomputing the prefix costs one full
  forward of the context per token: it is timed at the final context length (the "at N tokens" ratio) and at five
  context lengths, integrated over 0..N, for the estimated time of the whole generation without a cache (running it
  would take hours). Random weights would exhaust the point order within a few dozen points, so order enforcement is
  off here (grammar masks stay on); ``min_points`` keeps EOS away until N tokens.
- *decode steps*: the sampler's eager, fixed-shape (``static_step``) and compiled (``compile``) decode steps, and the
  eager and compiled ones with a bf16 KV cache (``kv_cache_dtype``), at batch 1 and 8, for the full and the
  role-factored output head (``--decode-tokens`` tokens each, after a warm-up that compiles), with the bytes each
  step streams (weights of the trunk and of the head rows it evaluates, KV-cache reads) per token and the achieved
  GB/s, against a GEMV roofline timed in the same run (the full output matrix times one hidden state: the best a
  memory-bound batch-1 step can stream here).
- *training*: forward + backward + AdamW step on random windows, target tokens per second.
- *10k-point avatar* (CUDA only): the base config's Transformer (24 x 1024, 16 heads, FLAME+teeth vocabulary, 773
  condition tokens) samples 10,000 points = 40,002 tokens in bf16 with its 12,000-token window, with the eager and
  with the compiled (CUDA-graph) decode step; random weights.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from avp.bench._timing import measure
from avp.device import ACCELERATOR, select_device
from avp.models.generator import GeneratorConfig, PointGenerator, training_windows
from avp.models.sampling import ATTEND_BUCKET, SamplingConfig, attended_slots, sample
from avp.models.tokenizer import PointTokenizer

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace

DESCRIPTION = "AR generator: KV-cache vs recompute sampling at 4k tokens, training tokens/s, 10k-point avatar on GPU"
FLAME_TEETH_FACES = 10144
BASE = GeneratorConfig(n_layers=24, width=1024, n_heads=16)
BASE_CONDITION_TOKENS = 1 + 4 + 256 + 512  # DINOv2-L/14 + 4 registers at 224 px, 512 mesh points


def add_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--device", type=str, default="auto", help="auto (CUDA when present) | cpu | cuda[:i]")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens generated in the KV-vs-recompute run")
    parser.add_argument("--layers", type=int, default=4, help="bench model depth (CPU-sized default)")
    parser.add_argument("--width", type=int, default=256, help="bench model width")
    parser.add_argument("--heads", type=int, default=4, help="bench model heads")
    parser.add_argument("--condition-tokens", type=int, default=128, help="condition tokens for the bench model")
    parser.add_argument("--train-window", type=int, default=1024, help="training window (input tokens)")
    parser.add_argument("--train-batch", type=int, default=2, help="training windows per step")
    parser.add_argument("--avatar-points", type=int, default=10000, help="points of the GPU avatar run")
    parser.add_argument("--skip-avatar", action="store_true", help="skip the base-config avatar run on a GPU")
    parser.add_argument("--decode-tokens", type=int, default=1024, help="tokens per decode-step measurement")
    parser.add_argument("--decode-batches", type=str, default="1,8", help="batch sizes of the decode-step measurements")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the compiled decode step")


def _tokenizer() -> PointTokenizer:
    return PointTokenizer(torch.tensor([[-0.2, -0.3, -0.2], [0.2, 0.3, 0.25]]), n_faces=FLAME_TEETH_FACES)


def _sync(device: torch.device) -> None:
    if device.type != "cpu" and hasattr(torch, device.type):
        getattr(torch, device.type).synchronize()


def _generate(model: PointGenerator, tok: PointTokenizer, condition: torch.Tensor, n_points: int, window: int,
              device: torch.device, compile_step: bool = False) -> tuple[float, list[float]]:
    """Seconds to sample ``n_points`` points with the KV cache, and the wall time after every step."""
    stamps: list[float] = []
    config = SamplingConfig(max_points=n_points, min_points=n_points, enforce_order=False, window=window,
                            compile=compile_step)
    gen = torch.Generator(device=device).manual_seed(0)
    _sync(device)
    start = time.perf_counter()
    sample(model, condition, tok, config, gen, on_step=lambda pos, total: stamps.append(time.perf_counter()))
    _sync(device)
    return time.perf_counter() - start, [s - start for s in stamps]


def _gemv_roofline(weight: torch.Tensor, device: torch.device) -> float:
    """GB/s of ``hidden [1, D] @ weight.T``: the matrix streamed once per call (the batch-1 decoding bound)."""
    h = torch.randn(1, weight.shape[1], device=device, dtype=weight.dtype)
    stats = measure(lambda: F.linear(h, weight), warmup=3, repeat=50, device=device)
    return weight.numel() * weight.element_size() / stats["min_s"] / 1e9


def _step_bytes(model: PointGenerator, tok: PointTokenizer, batch: int, kv_slots: float, condition_tokens: int,
                role_head: bool, kv_bytes: int | None = None) -> dict[str, float]:
    """Bytes one decode step streams: trunk weights (the condition's key/value projections run once per sample, not
    per step), the output rows it evaluates (role head: the mean over the four slots) and the KV caches it reads
    (``kv_bytes`` per element; None: the weights')."""
    size = next(model.parameters()).element_size()
    D = model.config.width
    trunk = sum(p.numel() for name, p in model.named_parameters()
                if name.startswith("blocks.") and ".cross.kv." not in name) * size
    L, Fn = tok.levels, tok.n_faces
    head_rows = (3 * L + 1 + Fn) / 4 if role_head else tok.vocab_size
    head = head_rows * D * size
    kv = model.config.n_layers * 2 * batch * (kv_slots + condition_tokens) * D * (kv_bytes or size)
    return {"weights": trunk + head, "kv": kv}


def _decode_speed(args: Namespace, tok: PointTokenizer, device: torch.device) -> dict[str, Any]:
    """Tokens/s of the sampler's eager, static and compiled decode steps, at each batch size and for both heads."""
    n_points = max(4, args.decode_tokens // 4)
    n_tokens = 4 * n_points + 1
    window = n_tokens + 8  # no slide: every step is a one-token decode step
    gemv = _gemv_roofline(PointGenerator(GeneratorConfig(n_layers=1, width=args.width, n_heads=args.heads),
                                         tok.vocab_size).to(device).head.weight.detach(), device)
    modes: dict[str, dict[str, Any]] = {"eager": {}, "static": {"static_step": True}}
    if not args.skip_compile:
        modes["compiled"] = {"compile": True}
    modes["eager, bf16 cache"] = {"kv_cache_dtype": "bfloat16"}
    if not args.skip_compile:
        modes["compiled, bf16 cache"] = {"compile": True, "kv_cache_dtype": "bfloat16"}
    rows: list[dict[str, Any]] = []
    for head in ("full", "role"):
        torch.manual_seed(0)
        config = GeneratorConfig(n_layers=args.layers, width=args.width, n_heads=args.heads, head=head)
        model = PointGenerator(config, tok.vocab_size).to(device).eval()
        for batch in (int(b) for b in args.decode_batches.split(",")):
            condition = torch.randn(batch, args.condition_tokens, args.width, device=device)
            for mode, extra in modes.items():
                sampling = SamplingConfig(max_points=n_points, min_points=n_points, enforce_order=False,
                                          window=window, **extra)
                gen = torch.Generator(device=device).manual_seed(0)
                # a whole sample first: it compiles the step for this batch size and each attended length
                sample(model, condition, tok, sampling, gen)
                _sync(device)
                start = time.perf_counter()
                sample(model, condition, tok, sampling, gen)
                _sync(device)
                seconds = time.perf_counter() - start
                step_s = seconds / n_tokens
                # eager steps read the valid part of the cache, half the sample on average; fixed-shape ones a
                # view up to the next ATTEND_BUCKET slots past the point they decode (CUDA graphs: the whole storage)
                kv_slots = (n_tokens / 2 if mode.startswith("eager")
                            else window if device.type == ACCELERATOR and "compiled" in mode
                            else sum(attended_slots(-(-t // 4) * 4, window) for t in range(1, n_tokens + 1)) / n_tokens)
                streamed = _step_bytes(model, tok, batch, kv_slots, args.condition_tokens, head == "role",
                                       kv_bytes=2 if "bf16" in mode else None)
                rows.append({"head": head, "batch": batch, "mode": mode,
                             "tokens_per_s": round(batch * n_tokens / seconds, 1),
                             "weight_bytes_per_token": round(streamed["weights"] / batch),
                             "kv_bytes_per_token": round(streamed["kv"] / batch),
                             "achieved_gb_per_s": round((streamed["weights"] + streamed["kv"]) / step_s / 1e9, 2)})
    by = {(r["head"], r["batch"], r["mode"]): r["tokens_per_s"] for r in rows}
    batches = [int(b) for b in args.decode_batches.split(",")]
    ratios: dict[str, float] = {}
    for head in ("full", "role"):
        best1 = max(by[(head, batches[0], m)] for m in modes)
        ratios[f"{head}_best_vs_eager_batch{batches[0]}"] = round(best1 / by[(head, batches[0], "eager")], 2)
        for b in batches[1:]:
            ratios[f"{head}_batch{b}_vs_batch{batches[0]}"] = round(max(by[(head, b, m)] for m in modes) / best1, 2)
    return {"tokens": n_tokens, "window": window, "gemv_roofline_gb_per_s": round(gemv, 2), "runs": rows,
            "ratios": ratios, "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "note": "tokens/s of whole samples (grammar masks, draws); bytes: trunk weights + evaluated head rows, "
                    "and KV-cache reads (eager reads the valid half on average, static/compiled on a CPU up to the "
                    f"next {ATTEND_BUCKET} slots, with CUDA graphs the whole window)"}


def run(args: Namespace) -> dict[str, Any]:
    device = select_device(args.device)
    torch.manual_seed(0)
    tok = _tokenizer()
    tok.to(device)
    config = GeneratorConfig(n_layers=args.layers, width=args.width, n_heads=args.heads)
    model = PointGenerator(config, tok.vocab_size).to(device).eval()
    condition = torch.randn(1, args.condition_tokens, args.width, device=device)
    n_points = max(1, args.tokens // 4)
    n_tokens = 4 * n_points + 1  # BOS + 4 per point

    # ---- KV cache: the whole generation, and the per-token time of the last 256 steps
    _generate(model, tok, condition, 16, n_tokens + 8, device)  # warm-up
    kv_total, stamps = _generate(model, tok, condition, n_points, n_tokens + 8, device)
    tail = min(256, len(stamps) - 1)
    kv_step_at_n = (stamps[-1] - stamps[-1 - tail]) / tail

    # ---- recompute: one full forward of the context per token
    tokens = torch.randint(0, tok.levels, (1, n_tokens), device=device)

    def full_forward(length: int) -> float:
        positions = torch.arange(length, device=device)
        with torch.no_grad():
            stats = measure(lambda: model(tokens[:, :length], condition, positions), warmup=1, repeat=2, device=device)
        return stats["median_s"]

    recompute_step_at_n = full_forward(n_tokens)
    lengths = sorted({max(1, round(n_tokens * f)) for f in (0.125, 0.25, 0.5, 0.75)} | {n_tokens})
    costs = [full_forward(n) for n in lengths[:-1]] + [recompute_step_at_n]
    xs, ys = [0, *lengths], [0.0, *costs]
    recompute_total = sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))

    # ---- training throughput
    train_model = PointGenerator(config, tok.vocab_size).to(device).train()
    optimizer = torch.optim.AdamW(train_model.parameters(), lr=1e-4)
    B, W = args.train_batch, args.train_window
    seqs = torch.randint(0, tok.levels, (B, W + 1), device=device)
    seqs[:, 0] = tok.bos_id
    lengths_t = torch.full((B,), W + 1, device=device)
    cond_b = condition.expand(B, -1, -1)

    def train_step() -> None:
        inputs, targets, positions = training_windows(seqs, lengths_t, W, tok.pad_id)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type != "cpu"):
            logits = train_model(inputs, cond_b, positions).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=tok.pad_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train = measure(train_step, warmup=1, repeat=3, device=device)

    result: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == ACCELERATOR else device.type,
        "bench_model": {"n_layers": args.layers, "width": args.width, "n_heads": args.heads,
                        "vocab": tok.vocab_size, "condition_tokens": args.condition_tokens,
                        "parameters": sum(p.numel() for p in model.parameters())},
        "sampling": {
            "tokens": n_tokens,
            "kv_total_s": round(kv_total, 3),
            "kv_tokens_per_s": round(n_tokens / kv_total, 1),
            "kv_tokens_per_s_at_n": round(1 / kv_step_at_n, 1),
            "recompute_tokens_per_s_at_n": round(1 / recompute_step_at_n, 2),
            "speedup_at_n": round(recompute_step_at_n / kv_step_at_n, 1),
            "recompute_total_s_estimated": round(recompute_total, 1),
            "speedup_whole_generation_estimated": round(recompute_total / kv_total, 1),
            "recompute_measured_at_context": lengths,
            "note": "order enforcement off (random weights); recompute total integrated from the measured contexts",
        },
        "training": {
            "batch": B, "window": W, "step_s": round(train["median_s"], 4),
            "tokens_per_s": round(B * W / train["median_s"], 1),
            "precision": "bf16-mixed" if device.type != "cpu" else "32-true",
        },
    }
    result["decode_steps"] = _decode_speed(args, tok, device)
    if device.type == "cpu":
        result["avatar_10k_points"] = "unavailable: needs a CUDA device (--device cuda)"
    elif args.skip_avatar:
        result["avatar_10k_points"] = "skipped (--skip-avatar)"
    else:
        result["avatar_10k_points"] = _base_avatar(device, tok, args.avatar_points)
    return result


def _base_avatar(device: torch.device, tok: PointTokenizer, n_points: int) -> dict[str, Any]:
    """Seconds for the base-config Transformer to sample ``n_points`` points (bf16, 12k window, KV cache)."""
    model = PointGenerator(BASE, tok.vocab_size).to(device).eval()
    condition = torch.randn(1, BASE_CONDITION_TOKENS, BASE.width, device=device)
    tokens = 4 * n_points + 1
    result: dict[str, Any] = {"points": n_points, "tokens": tokens, "window": 12000, "precision": "bf16-autocast",
                              "parameters": sum(p.numel() for p in model.parameters()), "target_s": 10}
    for name, compile_step in (("eager", False), ("compiled", True)):
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                _generate(model, tok, condition, 64, 12000, device, compile_step)  # warm-up (kernels, graphs)
                seconds, _ = _generate(model, tok, condition, n_points, 12000, device, compile_step)
        except RuntimeError as e:  # report a step that does not compile here instead of losing the other figures
            result[name] = f"failed: {e}"
            continue
        result[name] = {"seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}
    return result
