r"""Train the testbed's masked-diffusion LM (prr_testbed.model) on the task families of prr_testbed.tasks.

    python -m prr_testbed.train_model                       # into runs/model; CUDA if present (bf16 autocast)
    python -m prr_testbed.train_model --tiny --steps 200 --out /tmp/tiny    # seconds on a CPU: a debugging run

Writes --out/config.json and --out/model.safetensors (also at every --eval-every evaluation). Only --install copies
the result over the shipped model (prr_testbed/assets/model). Needs torch and safetensors, not prr_ext's compiled op.

The shipped checkpoint was made on one H100 in four runs, each from the one before (its config.json's `training`
records every run's full command and time):
    python -m prr_testbed.train_model --steps 5990 --out runs/stage1                  # 258 s, the defaults below
    python -m prr_testbed.train_model --init-from runs/stage1 --steps 1000 --warmup 100 --lr 5e-4 \
        --mix 0.5,3,0.25 --seed 1 --out runs/stage2                                  # 57 s, more word problems
    python -m prr_testbed.train_model --init-from runs/stage2 --steps 3000 --warmup 100 --lr 3e-4 \
        --mix 0.5,3,0.25 --seed 2 --out runs/stage3                                  # 259 s
    python -m prr_testbed.train_model --init-from runs/stage3 --steps 4000 --warmup 100 --lr 3e-4 \
        --mix 0.5,3,0.25 --seed 4 --out runs/stage4 --install                        # 336 s

Objective (LLaDA SFT): for each sequence draw t ~ U(0, 1), mask every response position (the response, then <eos>
up to the family's generation length) independently with probability p = (1 - eps) t + eps, never the prompt;
loss = sum over masked positions of CE / p, divided by the generation length, averaged over the batch.

Data: batch i is a pure function of (seed, i) (its own random.Random), drawn from the *train* split only
(prr_testbed.tasks hashes every prompt into test / valid / train), generated in DataLoader worker processes; masks
come from a torch generator seeded from `seed`. Held-out accuracy is logged on the *valid* split (never on the test
sets) with greedy one-token-per-step low-confidence decoding (= prr_ext.LowConfidence with steps == gen_length)
written in plain torch, so this command needs no compiled extension.

--budget-minutes M times the first steps and then fixes the step count to fit M minutes (printed, and saved in
config.json; re-run with --steps N to reproduce the same schedule). The learning-rate schedule depends on the step
count only.

--compile runs the training forward through torch.compile, every batch left-padded to the model's max_seq_len (one
shape, one compilation; pads are never attended to and RoPE sees relative positions, so the logits at the real
positions are the same). It pays on a GPU, after a compilation of about a minute; the log's steps/s line says by how
much.
"""
from __future__ import annotations

import json
import math
import os
import platform
import random
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from . import MODEL_DIR
from . import tasks as T
from .cli import check_input_dir, check_outputs, device_arg, parser, resolve_device
from .model import FORMAT as MODEL_FORMAT
from .model import MaskedDiffusionLM, ModelConfig, decode_responses, make_canvas
from .tokenizer import CharTokenizer

PROG = "python -m prr_testbed.train_model"
EPS = 1e-3
CHECKPOINT_DIR = "checkpoint"  # under --out: the state a resumed run continues from
# The settings a resumed run must share with the run that wrote the checkpoint (they fix the model, the data stream
# and the schedule).
DEFAULT_MIX = "1.5,2.5,0.5"  # arith, words, sudoku: the shipped model's first run
RESUME_SETTINGS = ("families", "mix", "seed", "batch_size", "lr", "warmup", "weight_decay", "d_model", "n_layers",
                   "n_heads", "d_ff", "steps", "budget_minutes", "init_from", "canvas_jitter")
RESUME_DEFAULTS = {"canvas_jitter": 0.0}  # what a checkpoint written before a setting existed ran with


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------
def encode_example(tok: CharTokenizer, ex: T.Example, gen_length: int) -> Tuple[List[int], int]:
    """(prompt ids + response ids + <eos> padding to gen_length, prompt length)."""
    p, r = tok.encode(ex.prompt), tok.encode(ex.response)
    if len(r) >= gen_length:
        raise ValueError(f"{ex.family} response of {len(r)} tokens does not fit gen_length={gen_length}")
    return p + r + [tok.eos_id] * (gen_length - len(r)), len(p)


def make_batch(seed: int, index: int, batch_size: int, families: Sequence[str], weights: Sequence[float],
               tok: CharTokenizer, pad_to: int = 0, canvas_jitter: float = 0.0) -> Dict[str, torch.Tensor]:
    """Batch `index`: left-padded ids [B, T], response mask [B, T], generation lengths [B], family index [B].
    T is the longest sequence's length, or pad_to if that is more (one shape for a compiled model).

    canvas_jitter: the fraction of examples whose canvas is cut to a uniform length between the answer plus its <eos>
    and the family's canvas (<eos> after the answer as always), so that the model also decodes canvases sized to
    the answer, as a length predictor gives them (issue 23); 0 draws nothing extra (the stream is unchanged)."""
    rng = random.Random(f"prr_ext.train_model/{seed}/{index}")  # this string seeds the training data
    seqs, plens, fams = [], [], []
    for _ in range(batch_size):
        fi = rng.choices(range(len(families)), weights)[0]
        fam = T.get_family(families[fi])
        ex = fam.sample_split(rng, "train")
        gen_length = fam.gen_length
        if canvas_jitter and rng.random() < canvas_jitter:
            gen_length = rng.randint(len(tok.encode(ex.response)) + 1, fam.gen_length)
        ids, plen = encode_example(tok, ex, gen_length)
        seqs.append(ids)
        plens.append(plen)
        fams.append(fi)
    L = max(pad_to, max(len(s) for s in seqs))
    ids = torch.full((batch_size, L), tok.pad_id, dtype=torch.int64)
    resp = torch.zeros((batch_size, L), dtype=torch.bool)
    glen = torch.zeros(batch_size, dtype=torch.int64)
    for b, (s, plen) in enumerate(zip(seqs, plens)):
        ids[b, L - len(s):] = torch.tensor(s)
        resp[b, L - len(s) + plen:] = True
        glen[b] = len(s) - plen
    return {"ids": ids, "resp": resp, "gen_len": glen, "family": torch.tensor(fams)}


class BatchStream(torch.utils.data.IterableDataset):
    """Batches start, start+1, ... ; worker w of W makes the batches with index = w (mod W). The DataLoader returns
    them round-robin, i.e. in index order, so the stream does not depend on the number of workers."""

    def __init__(self, seed, start, batch_size, families, weights, tok, pad_to=0, canvas_jitter=0.0):
        super().__init__()
        self.args = (seed, start, batch_size, tuple(families), tuple(weights), tok, pad_to, canvas_jitter)

    def __iter__(self):
        seed, start, bs, fams, ws, tok, pad_to, jitter = self.args
        info = torch.utils.data.get_worker_info()
        w, n = (info.id, info.num_workers) if info else (0, 1)
        i = start + w
        while True:
            yield make_batch(seed, i, bs, fams, ws, tok, pad_to, jitter)
            i += n


# ---------------------------------------------------------------------------------------------------------------
# loss and monitoring decode
# ---------------------------------------------------------------------------------------------------------------
def diffusion_loss(model: MaskedDiffusionLM, batch: Dict[str, torch.Tensor], gen: torch.Generator,
                   autocast_dtype: Optional[torch.dtype]) -> torch.Tensor:
    ids, resp, glen = batch["ids"], batch["resp"], batch["gen_len"]
    B, L = ids.shape
    dev = ids.device
    t = torch.rand(B, device=dev, generator=gen)
    p = (1 - EPS) * t + EPS
    masked = (torch.rand(B, L, device=dev, generator=gen) < p[:, None]) & resp
    x = torch.where(masked, torch.full_like(ids, model.config.mask_id), ids)
    with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(x).logits
    ce = F.cross_entropy(logits[masked].float(), ids[masked], reduction="none")
    w = (1.0 / (p * glen.float()))[:, None].expand(B, L)[masked]
    return (ce * w).sum() / B


@torch.no_grad()
def greedy_decode(model: MaskedDiffusionLM, x: torch.Tensor, gen_start: int, block_length: int,
                  autocast_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """One token per step, the most confident masked position of the active block (ties: lowest column), blocks
    left to right: prr_ext.LowConfidence with steps == gen_length, in plain torch. Returns the filled canvas."""
    x = x.clone()
    mask_id = model.config.mask_id
    G = x.shape[1] - gen_start
    rows = torch.arange(x.shape[0], device=x.device)
    for lo in range(gen_start, gen_start + G, block_length):
        hi = lo + block_length
        for _ in range(block_length):
            with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = model(x).logits[:, lo:hi].float()
            probs = logits.softmax(-1)
            probs[..., mask_id] = -1.0  # never a candidate (it stays in the normaliser above)
            conf, tok = probs.max(-1)
            conf = torch.where(x[:, lo:hi] == mask_id, conf, torch.full_like(conf, -math.inf))
            j = conf.argmax(-1)
            live = torch.isfinite(conf[rows, j])
            x[rows[live], lo + j[live]] = tok[rows[live], j[live]]
    return x


def heldout_accuracy(model: MaskedDiffusionLM, families: Sequence[str], n: int, split: str, device,
                     batch_size: int = 256, autocast_dtype=None) -> Dict[str, float]:
    tok = model.tokenizer
    out = {}
    model.eval()
    for name in families:
        fam = T.get_family(name)
        exs = T.heldout_set(name, split, n)
        ok = 0
        for i in range(0, len(exs), batch_size):
            chunk = exs[i:i + batch_size]
            x, _ = make_canvas(tok, [e.prompt for e in chunk], fam.gen_length, device)
            gs = x.shape[1] - fam.gen_length
            y = greedy_decode(model, x, gs, fam.block_length, autocast_dtype)
            ok += sum(fam.check(e, r) for e, r in zip(chunk, decode_responses(tok, y, gs)))
        out[name] = ok / len(exs)
    model.train()
    return out


# ---------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------
def lr_at(step: int, total: int, base: float, warmup: int, floor: float = 0.05) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    prog = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * prog)))


def parse_args(argv=None):
    ap = parser(PROG, __doc__)
    ap.add_argument("--out", default=os.path.join("runs", "model"),
                    help="output folder (config.json + model.safetensors; its parent must exist, except for the "
                    "default's)")
    ap.add_argument("--install", action="store_true",
                    help="after training, copy the model over the shipped one (prr_testbed/assets/model)")
    ap.add_argument("--steps", type=int, default=5990, help="optimizer steps (ignored with --budget-minutes)")
    ap.add_argument("--budget-minutes", type=float, default=None,
                    help="time the first steps, then fix --steps to fit this many minutes of training")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layers", type=int, default=6)
    ap.add_argument("--n-heads", type=int, default=8)
    ap.add_argument("--d-ff", type=int, default=688)
    ap.add_argument("--init-from", default=None, help="start from this saved model (fine-tuning / continuation)")
    ap.add_argument("--tiny", action="store_true", help="d_model 64, 2 layers, batch 32: a debugging configuration")
    ap.add_argument("--families", default=",".join(T.FAMILY_NAMES))
    ap.add_argument("--mix", default=None, help="sampling weights of the families, one per family (default: "
                    f"{DEFAULT_MIX} for the default families, else equal weights)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--canvas-jitter", type=float, default=0.0,
                    help="the fraction of examples trained on a canvas cut to a random length between the answer plus "
                         "its <eos> and the family's canvas, so that the model also decodes the canvases a length "
                         "predictor sizes (prr_ext.generate(gen_length=\"auto\"))")
    ap.add_argument("--device", type=device_arg, default="auto",
                    help="auto (the GPU when there is one), cpu, cuda, cuda:<index>")
    ap.add_argument("--workers", type=int, default=None, help="data worker processes (default: min(12, cores - 1))")
    ap.add_argument("--eval-every", type=int, default=1000, help="steps between held-out (valid split) evaluations (0: none)")
    ap.add_argument("--checkpoint-every", type=int, default=500,
                    help="steps between resumable checkpoints in <out>/checkpoint (0: none); running the same command "
                         "again continues from the last one")
    ap.add_argument("--eval-n", type=int, default=128, help="valid prompts per family at each evaluation")
    ap.add_argument("--final-eval-n", type=int, default=500, help="valid prompts per family at the end")
    ap.add_argument("--weights-dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar; a log line every 250 steps")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the training forward (batches padded to the model's max_seq_len, one shape; "
                    "the same logits at the real positions), faster on a GPU after a minute of compiling")
    args = ap.parse_args(argv)
    check_outputs(ap, args, dirs=("out",), writes=MODEL_FORMAT)
    if not 0.0 <= args.canvas_jitter <= 1.0:
        ap.error(f"argument --canvas-jitter: {args.canvas_jitter} is not a fraction in [0, 1]")
    if os.path.realpath(args.out) == os.path.realpath(MODEL_DIR):
        ap.error(f"argument --out: {args.out} is the shipped model's folder; train into another folder and add "
                 "--install to copy the result there")
    check_input_dir(ap, "--init-from", args.init_from, ("config.json", "model.safetensors"), "model")
    try:
        args.device = resolve_device(args.device)
    except ValueError as e:
        ap.error(f"argument --device: {e}")
    if args.tiny:
        args.d_model, args.n_layers, args.n_heads, args.d_ff = 64, 2, 4, 176
        args.batch_size = min(args.batch_size, 32)
    if args.checkpoint_every < 0:
        ap.error("argument --checkpoint-every: must be >= 0")
    for name in ("steps", "batch_size", "d_model", "n_layers", "n_heads", "d_ff", "eval_n", "final_eval_n",
                 "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"argument --{name.replace('_', '-')}: must be >= 1")
    for name in ("workers", "eval_every"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            ap.error(f"argument --{name.replace('_', '-')}: must be >= 0")
    if args.budget_minutes is not None and not 0.0 < args.budget_minutes < math.inf:
        ap.error("argument --budget-minutes: must be a positive number of minutes")
    if args.d_model % args.n_heads or (args.d_model // args.n_heads) % 2:
        ap.error(f"argument --n-heads: d_model {args.d_model} must split into {args.n_heads} heads of even size")
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in T.FAMILIES]
    if not families or unknown:
        ap.error(f"argument --families: unknown {','.join(unknown) or '(none given)'}; choose from "
                 f"{','.join(T.FAMILIES)}")
    if args.mix is None:  # (a string, as the checkpoints record it)
        args.mix = DEFAULT_MIX if families == list(T.FAMILY_NAMES) else ",".join(["1"] * len(families))
    try:
        weights = [float(w) for w in args.mix.split(",")]
    except ValueError:
        ap.error(f"argument --mix: {args.mix!r} is not a comma-separated list of numbers")
    if len(weights) != len(families) or any(not 0.0 <= w < math.inf for w in weights) or not sum(weights) > 0:
        ap.error(f"argument --mix: give {len(families)} finite weights >= 0 (one per family: {','.join(families)}), "
                 "not all 0")
    args.family_list, args.weights = families, weights  # parsed (--families and --mix stay the recorded strings)
    problem = checkpoint_settings_problem(args.out, args)
    if problem:
        ap.error(f"argument --out: {problem}. Use the same settings to continue it, or another --out")
    return args


# ---------------------------------------------------------------------------------------------------------------
# resumable runs: model, optimizer and masking-RNG state in safetensors, counters and settings in JSON
# ---------------------------------------------------------------------------------------------------------------
def _optimizer_params(opt: torch.optim.Optimizer) -> List[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


def save_checkpoint(out: str, model, opt, gen: torch.Generator, step: int, total: int, log: List[Dict],
                    ema: Optional[float], args) -> None:
    """Write <out>/checkpoint/{state.safetensors, state.json}; each file is replaced whole (write, then rename), so
    an interrupted save leaves the previous checkpoint readable."""
    from safetensors.torch import save_file

    folder = os.path.join(out, CHECKPOINT_DIR)
    os.makedirs(folder, exist_ok=True)
    tensors = {f"model.{k}": v.detach().to("cpu", torch.float32).clone().contiguous()
               for k, v in model.state_dict().items()}
    for i, p in enumerate(_optimizer_params(opt)):
        for k, v in opt.state.get(p, {}).items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v).detach().to("cpu").clone().contiguous()
    tensors["masking_rng"] = gen.get_state().cpu()
    save_file(tensors, os.path.join(folder, "state.safetensors.tmp"))
    os.replace(os.path.join(folder, "state.safetensors.tmp"), os.path.join(folder, "state.safetensors"))
    doc = {"step": step, "total": total, "log": log, "ema": ema,
           "settings": {k: getattr(args, k) for k in RESUME_SETTINGS}}
    with open(os.path.join(folder, "state.json.tmp"), "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(os.path.join(folder, "state.json.tmp"), os.path.join(folder, "state.json"))


def checkpoint_settings_problem(out: str, args) -> Optional[str]:
    """Why <out>'s checkpoint cannot be resumed with these settings (None: there is none, or it can)."""
    path = os.path.join(out, CHECKPOINT_DIR, "state.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        stored = json.load(f)["settings"]
    diff = [f"{k} {stored.get(k, RESUME_DEFAULTS.get(k))!r} -> {getattr(args, k)!r}" for k in RESUME_SETTINGS
            if stored.get(k, RESUME_DEFAULTS.get(k)) != getattr(args, k)]
    return ("it holds a checkpoint of a run with other settings (" + "; ".join(diff) + ")") if diff else None


def load_checkpoint(out: str, model, opt, gen: torch.Generator, device: torch.device) -> Optional[Dict]:
    """Restore a run from <out>/checkpoint (model, optimizer, masking RNG); returns its counters, or None."""
    path = os.path.join(out, CHECKPOINT_DIR, "state.json")
    if not os.path.exists(path):
        return None
    from safetensors.torch import load_file

    with open(path) as f:
        doc = json.load(f)
    tensors = load_file(os.path.join(out, CHECKPOINT_DIR, "state.safetensors"))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    for i, p in enumerate(_optimizer_params(opt)):
        state = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
        if state:
            opt.state[p] = {k: (v if k == "step" else v.to(device)) for k, v in state.items()}
    gen.set_state(tensors["masking_rng"])
    return doc


def main(argv=None) -> Dict:
    args = parse_args(argv)
    t_start = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    tok = CharTokenizer()
    families, weights = args.family_list, args.weights
    max_len = max(len(e.prompt) for f in families for e in T.heldout_set(f, "valid", 200)) + max(
        T.get_family(f).gen_length for f in families)
    cfg = ModelConfig.for_tokenizer(tok, d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads,
                                    d_ff=args.d_ff, max_seq_len=int(math.ceil(max_len / 8) * 8))
    if args.init_from:  # continue training a saved model (its architecture; fresh optimizer and schedule)
        model = MaskedDiffusionLM.from_pretrained(args.init_from)
        cfg = model.config
        args.d_model, args.n_layers, args.n_heads, args.d_ff = cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff
        parent = getattr(model, "metadata", {})
    else:
        model = MaskedDiffusionLM(cfg)
        model.reset_parameters(torch.Generator().manual_seed(args.seed))
        parent = None
    args.parent = parent
    model.to(dev).train()
    autocast_dtype = torch.bfloat16 if dev.type == "cuda" else None
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    gen = torch.Generator(device=dev).manual_seed(args.seed + 1)
    resumed = load_checkpoint(args.out, model, opt, gen, dev)
    step, total, log, ema = 0, args.steps, [], None
    if resumed is not None:
        step, total, log, ema = resumed["step"], resumed["total"], resumed["log"], resumed["ema"]
        print(f"[train_model] resuming {os.path.join(args.out, CHECKPOINT_DIR)} at step {step}/{total}", flush=True)

    workers = args.workers if args.workers is not None else max(0, min(12, (os.cpu_count() or 1) - 1))
    pad_to = cfg.max_seq_len if args.compile else 0
    ds = BatchStream(args.seed, step, args.batch_size, families, weights, tok, pad_to,  # batch i: index i of the stream
                     args.canvas_jitter)
    ctx = None
    if workers > 0 and sys.platform.startswith("linux"):
        import multiprocessing as mp
        ctx = mp.get_context("fork")  # the workers inherit the imported modules
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, pin_memory=dev.type == "cuda",
                                         prefetch_factor=8 if workers else None, multiprocessing_context=ctx,
                                         persistent_workers=False)
    print(f"[train_model] device={dev} params={model.num_parameters():,} config={cfg.to_dict() | {'tokenizer': '...'}}",
          flush=True)
    print(f"[train_model] families={families} mix={weights} batch={args.batch_size} lr={args.lr} workers={workers} "
          f"seed={args.seed}", flush=True)

    # a resumed run keeps the step count its budget was turned into
    budget_s = None if args.budget_minutes is None or resumed is not None else args.budget_minutes * 60
    calib_from, calib_at = 150, 300  # after the data workers and the GPU have warmed up
    it = iter(loader)
    try:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=step, disable=args.no_progress, dynamic_ncols=True, mininterval=2.0)
    except ImportError:  # pragma: no cover
        bar = None
    t_calib = None
    train_forward = torch.compile(model) if args.compile else model  # shares model's parameters
    while step < total:
        batch = {k: v.to(dev, non_blocking=True) for k, v in next(it).items()}
        lr = lr_at(step, total, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = diffusion_loss(train_forward, batch, gen, autocast_dtype)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if budget_s is not None and step in (calib_from, calib_at):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if step == calib_from:
                t_calib = time.time()
            else:
                rate = (calib_at - calib_from) / (time.time() - t_calib)
                left = budget_s - (time.time() - t_start)
                total = max(step + 1, int(step + 0.92 * left * rate))  # 8% left for the evaluations
                print(f"\n[train_model] {rate:.1f} steps/s -> --steps {total} fits the {args.budget_minutes} min "
                      "budget", flush=True)
                if bar is not None:
                    bar.total = total
        if step % 25 == 0 or step == total:
            lv = float(loss.detach())
            ema = lv if ema is None else 0.9 * ema + 0.1 * lv
            if bar is not None:
                bar.set_postfix(loss=f"{ema:.4f}", lr=f"{lr:.2e}", gnorm=f"{float(gnorm):.2f}")
            if args.no_progress and step % 250 == 0:
                print(f"[train_model] step {step}/{total} loss {ema:.4f} lr {lr:.2e} gnorm {float(gnorm):.2f} "
                      f"({time.time() - t_start:.0f} s)", flush=True)
        if bar is not None:
            bar.update(1)
        if args.eval_every > 0 and (step % args.eval_every == 0) and step < total:
            acc = heldout_accuracy(model, families, args.eval_n, "valid", dev, autocast_dtype=autocast_dtype)
            rec = {"step": step, "loss": ema, "valid_acc": acc, "elapsed_s": round(time.time() - t_start, 1)}
            log.append(rec)
            msg = f"[train_model] step {step}/{total} loss {ema:.4f} valid acc " + " ".join(
                f"{k}={v:.3f}" for k, v in acc.items())
            (bar.write(msg) if bar is not None else print(msg, flush=True))
            _save(model, args, total, step, log, t_start, dev, None)
        if args.checkpoint_every and (step % args.checkpoint_every == 0 or step == total):
            save_checkpoint(args.out, model, opt, gen, step, total, log, ema, args)
    if bar is not None:
        bar.close()
    train_s = time.time() - t_start
    acc = heldout_accuracy(model, families, args.final_eval_n, "valid", dev, autocast_dtype=autocast_dtype)
    log.append({"step": step, "loss": ema, "valid_acc": acc, "elapsed_s": round(time.time() - t_start, 1)})
    print(f"[train_model] done: {step} steps in {train_s:.0f} s; final loss {ema:.4f}; valid acc "
          f"(n={args.final_eval_n}, greedy 1 token/step) " + " ".join(f"{k}={v:.3f}" for k, v in acc.items()),
          flush=True)
    meta = _save(model, args, total, step, log, t_start, dev, acc, train_s)
    written = f"[train_model] wrote {os.path.abspath(args.out)} (config.json, model.safetensors)"
    if args.install:
        os.makedirs(MODEL_DIR, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copyfile(os.path.join(args.out, name), os.path.join(MODEL_DIR, name))
        written += f" and installed it in {MODEL_DIR}"
    print(written, flush=True)
    return meta


def recorded_command(args, total: int) -> str:
    """The command line that reproduces the run: every setting a resumed run must share (RESUME_SETTINGS, so a new
    one is recorded with no edit here), --steps resolved from --budget-minutes, a setting at the value that runs from
    before it existed used (RESUME_DEFAULTS) left out, the parent model named by the record's 'parent'."""
    pairs = []
    for k in RESUME_SETTINGS:
        v = total if k == "steps" else getattr(args, k)
        if k == "budget_minutes" or (k in RESUME_DEFAULTS and v == RESUME_DEFAULTS[k]):
            continue
        if k == "init_from":
            if v:
                pairs.append((k, "<the model of 'parent'>"))
            continue
        pairs.append((k, v))
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in pairs] + (["--compile"] if args.compile else [])
    return " ".join([PROG] + flags)


def _save(model, args, total, step, log, t_start, dev, final_acc, train_s=None) -> Dict:
    meta = {
        "command": recorded_command(args, total),
        "steps": total, "steps_done": step, "seed": args.seed, "batch_size": args.batch_size, "lr": args.lr,
        "canvas_jitter": args.canvas_jitter,
        "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""),
        "torch": torch.__version__, "python": platform.python_version(),
        "train_seconds": round(train_s, 1) if train_s is not None else round(time.time() - t_start, 1),
        "final_valid_acc": final_acc, "log": log, "objective": "LLaDA masked diffusion, 1/t-weighted CE on "
        "masked response positions, prompt never masked, eps=%g" % EPS,
        "data": "prr_testbed.tasks train split (hash-disjoint from valid/test)",
    }
    if getattr(args, "parent", None):
        meta["parent"] = args.parent  # the training record of the model this run started from
    model.save_pretrained(args.out, dtype=getattr(torch, args.weights_dtype), metadata=meta)
    return meta


if __name__ == "__main__":
    main()
