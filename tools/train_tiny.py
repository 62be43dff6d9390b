#!/usr/bin/env python3
"""Train minillm-tiny: a byte-level BPE tokenizer and a ~7M-parameter Llama, on one CPU core.

This is the whole recipe behind the model bundled in minillm/assets/minillm-tiny/:

  1. read the corpus written by tools/get_corpus.py (Jane Austen's novels, paragraphs
     separated by blank lines; train/ and valid/ are disjoint),
  2. train a 4096-token byte-level BPE tokenizer on train/ with the `tokenizers` library,
  3. turn every paragraph into  <|endoftext|> paragraph-tokens  and concatenate them into
     one long token stream per split; the training stream also gets ~1,100 two-turn "chats"
     made of consecutive lines of dialogue from the novels, in the chat template's format,
     so that the chat endpoint answers instead of stopping at once,
  4. train transformers' LlamaForCausalLM (grouped-query attention, tied embeddings) on
     256-token windows of that stream with AdamW and a warmup + cosine learning rate,
  5. report the held-out loss and save a Hugging Face checkpoint folder (float16 weights).

Everything is seeded and runs on one thread with deterministic algorithms, so the same
command on the same machine gives the same numbers.

    python tools/get_corpus.py                       # once: writes data/austen/
    python tools/train_tiny.py --smoke               # ~2 minutes: is the loss going down?
    python tools/train_tiny.py                       # the real run (~35 min on one core)
    python tools/eval_tiny.py                        # held-out perplexity and samples
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import re
import subprocess
import time
from pathlib import Path

import torch

# Special tokens. <|endoftext|> starts every paragraph (it is the BOS) and ends generation
# (it is the EOS); the chat tokens are reserved for the chat template below.
ENDOFTEXT, PAD = "<|endoftext|>", "<|pad|>"
DEFAULT_OUT = Path("minillm/assets/minillm-tiny")
SPECIAL_TOKENS = [ENDOFTEXT, PAD, "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# A minimal chat format:  <|endoftext|><|user|>\nHi<|end|>\n<|assistant|>\n ... <|end|>
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


# ----------------------------------------------------------------------------- data

def read_paragraphs(folder: Path) -> list[str]:
    """All paragraphs of all books in a split folder, books in sorted (fixed) order."""
    paragraphs = []
    for book in sorted(folder.glob("*.txt")):
        paragraphs += [p for p in book.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    return paragraphs


def train_tokenizer(paragraphs: list[str], vocab_size: int):
    """Train a GPT-2-style byte-level BPE and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Byte-level: every string is representable (no <unk>), and spaces stay attached to the
    # following word ("Ġday"), so decoding is exact.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,               # ids 0..5, in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(paragraphs, trainer=trainer)
    # Prepend <|endoftext|> to every encoded text, as in training, so a bare prompt like
    # "Once upon a time" looks like the start of a paragraph to the model.
    bos_id = tok.token_to_id(ENDOFTEXT)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{ENDOFTEXT} $A", pair=f"{ENDOFTEXT} $A {ENDOFTEXT} $B",
        special_tokens=[(ENDOFTEXT, bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, pad_token=PAD,
        additional_special_tokens=SPECIAL_TOKENS[2:], chat_template=CHAT_TEMPLATE,
        model_max_length=1024, clean_up_tokenization_spaces=False,
    )


def encode_split(tokenizer, paragraphs: list[str]) -> torch.Tensor:
    """One long token stream: <|endoftext|> p1 <|endoftext|> p2 ...

    The separator teaches the model where paragraphs start and lets it end a generation by
    emitting <|endoftext|>. Windows are cut across paragraph borders, so the model still
    sees the previous paragraphs as context.
    """
    ids = tokenizer(paragraphs, add_special_tokens=True, verbose=False)["input_ids"]   # each starts with BOS
    return torch.tensor([t for p in ids for t in p], dtype=torch.long)


def dialogue_chats(tokenizer, paragraphs: list[str], max_words: int = 60) -> list[str]:
    """Two consecutive paragraphs of pure speech, rendered as a user turn and a reply.

    In a novel, two quoted paragraphs in a row are (nearly always) two people talking to each
    other. This is the only "instruction tuning" minillm-tiny gets: it teaches the chat format
    (<|user|> ... <|end|> <|assistant|> ... <|end|>), not helpfulness.
    """
    speech = re.compile(r'^"([^"]+)"$')            # a whole paragraph inside one pair of quotes
    chats = []
    for first, second in zip(paragraphs, paragraphs[1:]):
        a, b = speech.match(first), speech.match(second)
        if a and b and len(first.split()) <= max_words and len(second.split()) <= max_words:
            messages = [{"role": "user", "content": a.group(1)},
                        {"role": "assistant", "content": b.group(1)}]
            chats.append(tokenizer.apply_chat_template(messages, tokenize=False))
    return chats


def encode_chats(tokenizer, chats: list[str]) -> torch.Tensor:
    """The rendered chats already start with <|endoftext|>: add no second one."""
    ids = tokenizer(chats, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor([t for c in ids for t in c], dtype=torch.long)


def train_windows(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Cut the stream into non-overlapping (seq_len + 1)-token windows: inputs + next-token targets."""
    n = (len(stream) - 1) // seq_len
    starts = torch.arange(n) * seq_len
    return torch.stack([stream[s:s + seq_len + 1] for s in starts.tolist()])


def batches(windows: torch.Tensor, batch_size: int, seed: int):
    """Endless stream of batches; each epoch is a fresh permutation from a seeded generator."""
    epoch = 0
    while True:
        order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed + epoch))
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield epoch, windows[order[i:i + batch_size]]
        epoch += 1


# ----------------------------------------------------------------------------- model

def build_model(vocab_size: int, args, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,       # grouped-query attention: 4 query heads per KV head
        max_position_embeddings=1024,            # trained on 256; longer contexts are untested
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,                # the LM head reuses the embedding matrix
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )
    return LlamaForCausalLM(config)


def lr_at(step: int, args) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, args):
    # No weight decay on norms (1-D weights): decaying them only fights the normalisation.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
    )


def next_token_loss(model, batch: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting token t+1 from tokens <= t, over a (B, seq_len+1) batch."""
    logits = model(input_ids=batch[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                             batch[:, 1:].reshape(-1))


@torch.no_grad()
def heldout_loss(model, stream: torch.Tensor, seq_len: int, batch_size: int = 16,
                 max_windows: int | None = None) -> float:
    """Mean next-token loss over the held-out stream, in non-overlapping seq_len windows."""
    model.eval()
    windows = train_windows(stream, seq_len)[:max_windows]
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        w = windows[i:i + batch_size]
        logits = model(input_ids=w[:, :-1]).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), w[:, 1:].reshape(-1), reduction="sum")
        total, count = total + loss.item(), count + w[:, 1:].numel()
    model.train()
    return total / count


# ----------------------------------------------------------------------------- saving

def machine_description() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(l.split(":", 1)[1].strip() for l in lscpu.splitlines() if "Model name" in l)
    except Exception:
        name = platform.processor() or "unknown CPU"
    return f"{name}, {torch.get_num_threads()} thread(s) of {__import__('os').cpu_count()} cores"


def save_checkpoint(model, tokenizer, out: Path, summary: dict) -> None:
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    # float16 halves the file; the values of a small, well-trained model fit easily in its
    # range, and loaders cast to float32 for CPU inference.
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    model.to(torch.float32)
    tokenizer.save_pretrained(out)
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, end_id],   # stop at paragraph end or chat turn end
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=128,
    ).save_pretrained(out)
    make_portable(out, tokenizer)
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def make_portable(out: Path, tokenizer) -> None:
    """Rewrite the saved files so that transformers 4.x reads them as well as 5.x does.

    transformers 5 saves the chat template as chat_template.jinja, names the tokenizer class
    "TokenizersBackend" and writes `dtype` and `rope_parameters`; 4.x looks for the template
    in tokenizer_config.json, for "PreTrainedTokenizerFast", `torch_dtype` and `rope_theta`.
    """
    def update(name: str, drop: tuple = (), **fields) -> None:
        data = json.loads((out / name).read_text())
        data.update(fields)
        for key in drop:
            data.pop(key, None)
        (out / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")

    (out / "chat_template.jinja").unlink(missing_ok=True)
    # 4.x expects `extra_special_tokens` to be a dict, so the list goes under the old name.
    update("tokenizer_config.json", drop=("extra_special_tokens",),
           tokenizer_class="PreTrainedTokenizerFast",
           chat_template=CHAT_TEMPLATE, additional_special_tokens=SPECIAL_TOKENS[2:])
    specials = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "pad_token": PAD,
                "additional_special_tokens": SPECIAL_TOKENS[2:]}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    config = json.loads((out / "config.json").read_text())
    update("config.json", torch_dtype=config["dtype"],
           rope_theta=config["rope_parameters"]["rope_theta"])


# ----------------------------------------------------------------------------- main

def parse_args():
    ap = argparse.ArgumentParser(description="Train minillm-tiny on one CPU core.")
    ap.add_argument("--data", type=Path, default=Path("data/austen"))
    ap.add_argument("--out", type=Path, default=None,
                    help="checkpoint folder (default: minillm/assets/minillm-tiny; "
                         "a --smoke run saves only when --out is given)")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=704)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1400)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="keep 1 on a shared machine")
    ap.add_argument("--smoke", action="store_true",
                    help="80 steps (~2 min), quick held-out check, nothing saved unless --out is given")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.eval_every, args.log_every = 80, 10, 40, 10
    elif args.out is None:
        args.out = DEFAULT_OUT
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()

    train_text = read_paragraphs(args.data / "train")
    valid_text = read_paragraphs(args.data / "valid")
    tokenizer = train_tokenizer(train_text, args.vocab_size)
    chats = dialogue_chats(tokenizer, train_text)
    # The held-out stream is prose only, so its loss measures the same thing in every run.
    train_stream = torch.cat([encode_split(tokenizer, train_text), encode_chats(tokenizer, chats)])
    valid_stream = encode_split(tokenizer, valid_text)
    windows = train_windows(train_stream, args.seq_len)
    print(f"corpus: {len(train_text)} train paragraphs + {len(chats)} dialogue chats / "
          f"{len(valid_text)} held-out paragraphs, {len(train_stream):,} / "
          f"{len(valid_stream):,} tokens, {len(windows)} train windows")

    model = build_model(len(tokenizer), args, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params/1e6:.2f} M parameters, {machine_description()}")
    optimizer = make_optimizer(model, args)
    # In a smoke run a slice of the held-out set is enough to see the trend.
    eval_windows = 32 if args.smoke else None

    history, running, t_train = [], [], time.time()
    batch_iter = batches(windows, args.batch_size, args.seed)
    for step in range(args.steps):
        epoch, batch = next(batch_iter)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        loss = next_token_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        running.append(loss.item())

        if (step + 1) % args.log_every == 0:
            elapsed = time.time() - t_train
            tok_s = (step + 1) * args.batch_size * args.seq_len / elapsed
            print(f"step {step+1:5d} | epoch {epoch} | train loss {sum(running)/len(running):.4f} "
                  f"| lr {lr_at(step, args):.2e} | {tok_s:,.0f} tok/s | {elapsed/60:.1f} min",
                  flush=True)
            history.append({"step": step + 1, "train_loss": sum(running) / len(running)})
            running = []
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            val = heldout_loss(model, valid_stream, args.seq_len, max_windows=eval_windows)
            print(f"step {step+1:5d} | held-out loss {val:.4f} | perplexity {math.exp(val):.2f}",
                  flush=True)
            history.append({"step": step + 1, "heldout_loss": val})

    train_minutes = (time.time() - t_train) / 60
    final_train = next(h["train_loss"] for h in reversed(history) if "train_loss" in h)
    final_val = next(h["heldout_loss"] for h in reversed(history) if "heldout_loss" in h)
    print(f"done in {train_minutes:.1f} min of training ({(time.time()-t_start)/60:.1f} min total); "
          f"train loss {final_train:.4f}, held-out loss {final_val:.4f} "
          f"(perplexity {math.exp(final_val):.2f})")
    if args.out is None:
        return                                            # smoke run without --out: save nothing
    save_checkpoint(model, tokenizer, args.out, {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "parameters": n_params,
        "train_tokens": len(train_stream), "heldout_tokens": len(valid_stream),
        "tokens_seen": args.steps * args.batch_size * args.seq_len,
        "train_minutes": round(train_minutes, 1),
        "machine": machine_description(),
        "torch": torch.__version__,
        "final_train_loss": round(final_train, 4),
        "final_heldout_loss_fp32": round(final_val, 4),
        "history": history,
    })
    print(f"saved {args.out}")



if __name__ == "__main__":
    main()
