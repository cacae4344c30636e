"""prr_ext.load and Decoder.generate: text in, text out, on tiny random models of every supported kind.

Each kind is written to a temporary directory in the format its real models use: a transformers BertForMaskedLM
(save_pretrained) with a WordLevel tokenizer; LLaDA- and Dream-style remote-code models whose modeling and
configuration files are written here (our own small RoPE transformer with LLaDA's / Dream's interface and config
keys, `auto_map` in config.json); and the shipped prr_testbed checkpoint. Everything runs on CPU, offline.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

import prr_ext
import prr_testbed
from prr_ext.hub import DecodeResult, Decoder, DreamShiftedLogits, MaskedLMCall, TokenIds, detect_kind

WORDS = ("the a cat dog sat on mat is red blue one two three four five six seven eight nine ten + = ? yes no "
         "hello world big small runs jumps").split()
PROMPTS = ["the cat sat on the mat", "one + two =", "hello", "is the dog big ? yes no red blue"]


# ---------------------------------------------------------------------------------------------------------------
# tiny models on disk
# ---------------------------------------------------------------------------------------------------------------
def write_tokenizer(directory, specials, *, unk, pad=None, mask=None, eos=None, chat_template=None, extra_words=0):
    """A WordLevel tokenizer (whitespace-split words; `specials` first, then WORDS) saved as PreTrainedTokenizerFast.
    Returns its size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = list(specials) + WORDS + [f"extra{i}" for i in range(extra_words)]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(list(specials))
    named = {k: v for k, v in dict(unk_token=unk, pad_token=pad, mask_token=mask, eos_token=eos).items() if v}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **named)
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(str(directory))
    return len(tokens)


BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[EOS]", "<|user|>", "<|assistant|>", "<|eot|>"]
BERT_CHAT = ("{% for m in messages %}<|user|> {{ m['content'] }} <|eot|> {% endfor %}"
             "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def write_bert(directory, *, vocab_size=None, mask="[MASK]", extra_words=0):
    """A tiny random BertForMaskedLM and its tokenizer; the [MASK] logit pushed down (a trained MLM never predicts
    it). `vocab_size` smaller than the tokenizer makes a mismatched pair."""
    from transformers import BertConfig, BertForMaskedLM

    V = write_tokenizer(directory, BERT_SPECIALS, unk="[UNK]", pad="[PAD]", mask=mask, eos="[EOS]",
                        chat_template=BERT_CHAT, extra_words=extra_words)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size or V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    model = BertForMaskedLM(config)
    with torch.no_grad():
        model.cls.predictions.bias[BERT_SPECIALS.index("[MASK]")] = -100.0
    model.save_pretrained(str(directory))


# Our own tiny bidirectional transformer (rotary positions, so padding never moves what a row sees), written into
# each remote-code directory; {mask_logit} keeps it from predicting the mask token, as a trained model never does.
TINY_CORE = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


def rotate(x, positions):
    half = x.shape[-1] // 2
    freqs = 10000.0 ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.float()[:, None, :, None] * freqs
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], -1)


class TinyLayer(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.norm_attn, self.norm_ff = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.ff = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, h, positions, bias):
        B, L, W = h.shape
        q, k, v = self.qkv(self.norm_attn(h)).view(B, L, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(rotate(q, positions), rotate(k, positions), v, attn_mask=bias)
        h = h + self.out(a.transpose(1, 2).reshape(B, L, W))
        return h + self.ff(self.norm_ff(h))


class TinyCore(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(TinyLayer(config.hidden_size, config.num_heads) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.hidden_size)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        self.mask_token_id = config.mask_token_id

    def forward(self, input_ids, allowed, positions):
        h = self.embed(input_ids)
        bias = torch.zeros(allowed.shape, dtype=h.dtype, device=h.device)
        bias = bias.masked_fill(~allowed, torch.finfo(h.dtype).min)
        for layer in self.layers:
            h = layer(h, positions, bias)
        logits = self.head(self.norm(h))
        if self.mask_token_id is not None:
            logits[..., self.mask_token_id] = -1e4
        return logits


def init_tiny(module):
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.5)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
'''

CONFIGURATION = '''
from transformers import PretrainedConfig


class {name}Config(PretrainedConfig):
    model_type = "{model_type}"

    def __init__(self, vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, mask_token_id=None, **kwargs):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_layers, self.num_heads = num_layers, num_heads
        self.mask_token_id = mask_token_id
        super().__init__(**kwargs)
'''

# LLaDA's interface: forward(input_ids, attention_mask=None) with a [B, L] key mask, positions 0..L-1, logits at
# position j predict token j.
LLADA_MODELING = '''
import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_tinyllada import TinyLLaDAConfig
{core}


class TinyLLaDAModelLM(PreTrainedModel):
    config_class = TinyLLaDAConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.model = TinyCore(config)
        self.post_init()

    def _init_weights(self, module):
        init_tiny(module)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        B, L = input_ids.shape
        positions = torch.arange(L, device=input_ids.device).expand(B, L)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        allowed = attention_mask.bool()[:, None, None, :].expand(B, 1, L, L)
        return CausalLMOutput(logits=self.model(input_ids, allowed, positions))
'''

# Dream's interface: forward(input_ids, attention_mask=None, position_ids=None) with Dream's [B, 1, L, L] boolean
# mask (or none), logits at position j predict token j + 1.
DREAM_MODELING = '''
import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_tinydream import TinyDreamConfig
{core}


class TinyDreamModel(PreTrainedModel):
    config_class = TinyDreamConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.model = TinyCore(config)
        self.post_init()

    def _init_weights(self, module):
        init_tiny(module)

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        B, L = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(L, device=input_ids.device).expand(B, L)
        if attention_mask is None:
            allowed = torch.ones(B, 1, L, L, dtype=torch.bool, device=input_ids.device)
        elif attention_mask.dim() == 4:
            allowed = attention_mask.bool()
        else:
            raise ValueError("this model takes Dream's [B, 1, L, L] attention mask")
        return MaskedLMOutput(logits=self.model(input_ids, allowed, position_ids))
'''

LLADA_SPECIALS = ["<|endoftext|>", "<|unk|>", "<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>"]
LLADA_CHAT = ("<|startoftext|> {% for m in messages %}<|start_header_id|> {{ m['role'] }} <|end_header_id|> "
              "{{ m['content'] }} <|eot_id|> {% endfor %}"
              "{% if add_generation_prompt %}<|start_header_id|> assistant <|end_header_id|>{% endif %}")
DREAM_SPECIALS = ["<|endoftext|>", "<|unk|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
DREAM_CHAT = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
              "{% if add_generation_prompt %}<|im_start|> assistant{% endif %}")


def write_remote_code_model(directory, *, style, mask_in_config=True):
    """A LLaDA- or Dream-style remote-code checkpoint: our modeling / configuration files, config.json with
    auto_map, random weights (model.safetensors) and the tokenizer. LLaDA's mask token <|mdm_mask|> is the last
    id (V - 1); Dream's <|mask|> is the tokenizer's mask token."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel

    if style == "llada":
        name, model_type, modeling = "TinyLLaDA", "llada", LLADA_MODELING
        specials = LLADA_SPECIALS
        V = write_tokenizer(directory, specials, unk="<|unk|>", eos="<|endoftext|>", pad="<|endoftext|>",
                            chat_template=LLADA_CHAT, extra_words=0) + 1
        # <|mdm_mask|> as the last id, as an added token (LLaDA's tokenizer declares no mask_token)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(directory))
        tok.add_special_tokens({"additional_special_tokens": ["<|mdm_mask|>"]})
        tok.save_pretrained(str(directory))
        assert len(tok) == V and tok.convert_tokens_to_ids("<|mdm_mask|>") == V - 1
        ids = dict(mask_token_id=V - 1, eos_token_id=0, pad_token_id=0)
        arch, auto_map = "TinyLLaDAModelLM", {"AutoConfig": "configuration_tinyllada.TinyLLaDAConfig",
                                              "AutoModel": "modeling_tinyllada.TinyLLaDAModelLM",
                                              "AutoModelForCausalLM": "modeling_tinyllada.TinyLLaDAModelLM"}
    else:
        name, model_type, modeling = "TinyDream", "Dream", DREAM_MODELING
        V = write_tokenizer(directory, DREAM_SPECIALS, unk="<|unk|>", eos="<|endoftext|>", pad="<|endoftext|>",
                            mask="<|mask|>", chat_template=DREAM_CHAT)
        ids = dict(mask_token_id=DREAM_SPECIALS.index("<|mask|>"), eos_token_id=0, pad_token_id=0)
        arch, auto_map = "TinyDreamModel", {"AutoConfig": "configuration_tinydream.TinyDreamConfig",
                                            "AutoModel": "modeling_tinydream.TinyDreamModel"}
    lower = name.lower()
    with open(os.path.join(directory, f"configuration_{lower}.py"), "w") as f:
        f.write(CONFIGURATION.format(name=name, model_type=model_type))
    with open(os.path.join(directory, f"modeling_{lower}.py"), "w") as f:
        f.write(modeling.format(core=TINY_CORE))
    config = dict(architectures=[arch], model_type=model_type, auto_map=auto_map, vocab_size=V, hidden_size=32,
                  num_layers=2, num_heads=2, torch_dtype="float32", **ids)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    torch.manual_seed(1 if style == "llada" else 2)
    model = AutoModel.from_config(AutoConfig.from_pretrained(str(directory), trust_remote_code=True),
                                  trust_remote_code=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(directory, "model.safetensors"),
              metadata={"format": "pt"})
    if not mask_in_config:
        del config["mask_token_id"]
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(config, f, indent=2)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    if "transformers" not in sys.modules:  # remote code is copied here, not into ~/.cache/huggingface/modules
        os.environ.setdefault("HF_MODULES_CACHE", str(tmp_path_factory.mktemp("hf_modules")))
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = tmp_path_factory.mktemp("load_models")
    dirs = {}
    for kind, write in (("masked_lm", write_bert), ("llada", lambda d: write_remote_code_model(d, style="llada")),
                        ("dream", lambda d: write_remote_code_model(d, style="dream"))):
        d = root / f"tiny_{kind}"
        d.mkdir()
        write(d)
        dirs[kind] = str(d)
    dirs["testbed"] = prr_testbed.MODEL_DIR
    return dirs


@pytest.fixture(scope="module")
def decoders(model_dirs):
    return {kind: prr_ext.load(path, trust_remote_code=kind in ("llada", "dream")) for kind, path in model_dirs.items()}


HF_KINDS = ("masked_lm", "llada", "dream")


# ---------------------------------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------------------------------
def test_kinds_and_ids(decoders):
    bert, llada, dream, testbed = (decoders[k] for k in ("masked_lm", "llada", "dream", "testbed"))
    assert [d.kind for d in (bert, llada, dream, testbed)] == ["masked_lm", "llada", "dream", "testbed"]
    assert [d.style for d in (bert, llada, dream, testbed)] == ["llada", "llada", "dream", "llada"]
    tok = bert.tokenizer
    assert bert.ids.mask == tok.convert_tokens_to_ids("[MASK]")
    assert bert.ids.sources["mask"] == "tokenizer.mask_token_id"
    assert bert.ids.eos == tok.convert_tokens_to_ids("[EOS]") and bert.ids.pad == tok.convert_tokens_to_ids("[PAD]")
    assert bert.ids.eot == tok.convert_tokens_to_ids("<|eot|>")
    assert isinstance(bert.call, MaskedLMCall) and bert.call.takes_position_ids
    V = len(llada.tokenizer)
    assert llada.ids.mask == V - 1 and llada.ids.sources["mask"] == "config.mask_token_id"
    assert (llada.ids.eos, llada.ids.pad) == (0, 0)
    assert llada.ids.eot == llada.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert llada.call is llada.model
    assert dream.ids.mask == DREAM_SPECIALS.index("<|mask|>") and dream.ids.eos == 0
    assert dream.ids.eot == DREAM_SPECIALS.index("<|im_end|>")
    assert isinstance(dream.call, DreamShiftedLogits)
    assert (testbed.ids.mask, testbed.ids.eos, testbed.ids.pad, testbed.ids.eot) == (2, 1, 0, None)
    assert "kind='llada'" in repr(llada)


def test_detect_kind():
    assert detect_kind({"format": "prr_ext.mdlm"}) == "testbed"
    assert detect_kind({"model_type": "llada", "architectures": ["LLaDAModelLM"]}) == "llada"
    assert detect_kind({"model_type": "lladamoe"}) == "llada"
    assert detect_kind({"model_type": "Dream", "architectures": ["DreamModel"]}) == "dream"
    assert detect_kind({"model_type": "roberta", "architectures": ["RobertaForMaskedLM"]}) == "masked_lm"
    with pytest.raises(ValueError, match="cannot tell what kind of model"):
        detect_kind({"model_type": "my_causal_lm", "architectures": ["MyForCausalLM"]})


def test_llada_mask_from_the_tokenizer(model_dirs, tmp_path):
    """Without config.mask_token_id a LLaDA-type model takes the tokenizer's <|mdm_mask|>."""
    d = tmp_path / "llada_no_config_mask"
    shutil.copytree(model_dirs["llada"], d)
    with open(d / "config.json") as f:
        config = json.load(f)
    del config["mask_token_id"]
    with open(d / "config.json", "w") as f:
        json.dump(config, f)
    dec = prr_ext.load(d, trust_remote_code=True)
    assert dec.ids.mask == len(dec.tokenizer) - 1 and "<|mdm_mask|>" in dec.ids.sources["mask"]


# ---------------------------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------------------------
def check_results(dec, results, prompts, gen_length):
    assert len(results) == len(prompts)
    for r in results:
        assert isinstance(r, DecodeResult)
        assert r.tokens.shape == (gen_length,) and r.tokens.dtype == torch.int64
        assert not (r.tokens == dec.ids.mask).any()
        assert 1 <= r.nfe <= gen_length and r.tokens_per_forward > 0 and r.seconds > 0
        text, finished = dec.decode_response(r.tokens.tolist())
        assert (r.text, r.finished) == (text, finished)
        stops = [i for i, t in enumerate(r.tokens.tolist()) if t in dec.ids.stop]
        assert r.finished == bool(stops)


@pytest.mark.parametrize("kind", HF_KINDS)
def test_generate_batch_matches_single_and_is_deterministic(decoders, kind):
    dec = decoders[kind]
    policy = prr_ext.Threshold(tau=0.5)
    batch = dec.generate(PROMPTS, policy=policy, gen_length=8, block_length=4, batch_size=3)
    check_results(dec, batch, PROMPTS, 8)
    again = dec.generate(PROMPTS, policy=policy, gen_length=8, block_length=4, batch_size=3)
    single = [dec.generate([p], policy=policy, gen_length=8, block_length=4)[0] for p in PROMPTS]
    for b, a, s in zip(batch, again, single):
        assert torch.equal(b.tokens, a.tokens) and b.text == a.text
        assert torch.equal(b.tokens, s.tokens) and b.text == s.text and b.nfe == s.nfe
    assert len({r.seconds for r in batch}) == 2  # two batches (3 + 1 prompts)
    assert [r.prompt_tokens.tolist() for r in batch] == [dec.encode_prompt(p) for p in PROMPTS]


@pytest.mark.parametrize("kind", HF_KINDS)
def test_generate_chat(decoders, kind):
    dec = decoders[kind]
    results = dec.generate(PROMPTS[:2], gen_length=8, chat=True)  # default policy: LowConfidence, steps = 8
    check_results(dec, results, PROMPTS[:2], 8)
    assert all(r.nfe == 8 for r in results)
    tok = dec.tokenizer
    expected = tok(tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True,
                                           tokenize=False), add_special_tokens=False)["input_ids"]
    assert results[0].prompt_tokens.tolist() == expected
    assert tok.convert_tokens_to_ids(PROMPTS[0].split()[1]) in expected
    # a chat given as messages is templated as well
    chat = [{"role": "user", "content": PROMPTS[0]}]
    assert dec.encode_prompt(chat) == expected
    assert torch.equal(dec.generate(chat, gen_length=8)[0].tokens, results[0].tokens)


def test_generate_masked_lm_text(decoders):
    """The BERT tokenizer's text: words joined by spaces, specials skipped, cut at the first [EOS] / <|eot|>."""
    dec = decoders["masked_lm"]
    tok = dec.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in ["cat", "[CLS]", "sat", "<|eot|>", "dog"]]
    assert dec.decode_response(ids) == ("cat sat", True)
    assert dec.decode_response(ids[:3]) == ("cat sat", False)


def test_testbed_text(decoders):
    """The shipped model answers its task: text in, text out (prr_testbed's README example)."""
    dec = decoders["testbed"]
    r = dec.generate(["4821+7395="], gen_length=24, block_length=12, policy=prr_ext.Threshold(tau=0.9))
    assert r[0].text == "c:1110 s:12216" and r[0].finished and r[0].nfe < 24
    batch = dec.generate(["4821+7395=", "12+5="], gen_length=24, block_length=12, policy=prr_ext.Threshold(tau=0.9))
    assert batch[0].text == "c:1110 s:12216" and torch.equal(batch[0].tokens, r[0].tokens)
    with pytest.raises(ValueError, match="chat template"):
        dec.generate(["1+1="], gen_length=8, chat=True)


def test_dream_native_sampler(decoders):
    dec = decoders["dream"]
    results = dec.generate(PROMPTS[:2], gen_length=8, style="dream", alg="entropy")
    check_results(dec, results, PROMPTS[:2], 8)
    with pytest.raises(ValueError, match="Dream-style models"):
        decoders["llada"].generate(["hello"], gen_length=8, style="dream")
    with pytest.raises(ValueError, match="not a prr_ext policy"):
        dec.generate(["hello"], gen_length=8, style="dream", policy=prr_ext.LowConfidence())


class AnswerAfterShift:
    """A Dream-style stand-in: the logits at position j favour ANSWER[j + 1] (Dream predicts the next position), so
    decoding through the right shift must write ANSWER[j] at every generated position j. Records the keywords."""

    def __init__(self, V, answer):
        self.V, self.answer, self.calls = V, answer, []
        self.config = SimpleNamespace(vocab_size=V)

    def __call__(self, x, **kw):
        self.calls.append({k: tuple(v.shape) for k, v in kw.items()})
        B, L = x.shape
        logits = torch.zeros(B, L, self.V)
        for j in range(L - 1):
            logits[:, j, self.answer[j + 1]] = 5.0 + j / L  # later positions slightly more confident
        return SimpleNamespace(logits=logits)


def test_dream_shift_aligns_logits(decoders):
    V = 12
    raw = torch.randn(2, 5, V)
    shifted = DreamShiftedLogits(lambda x: SimpleNamespace(logits=raw))(torch.zeros(2, 5, dtype=torch.long))
    assert torch.equal(shifted[:, 1:], raw[:, :-1]) and torch.equal(shifted[:, 0], raw[:, 0])

    tok = decoders["dream"].tokenizer
    words = ["cat", "sat", "on", "the", "mat", "one", "two", "three"]
    G, P = len(words), 3
    answer = [0] * P + [tok.convert_tokens_to_ids(w) for w in words]  # indexed by canvas column (P-token prompt)
    model = AnswerAfterShift(len(tok), answer)
    dec = Decoder(model, tok, kind="dream", ids=TokenIds(mask=DREAM_SPECIALS.index("<|mask|>"), eos=0, pad=0),
                  device="cpu")
    r = dec.generate(["red blue big"], gen_length=G, policy=prr_ext.LowConfidence())
    assert r[0].text == " ".join(words) and model.calls[0] == {}
    # a left-padded batch: Dream's [B, 1, L, L] mask and position ids reach the model
    model.calls.clear()
    dec.generate(["red blue big", "red"], gen_length=G, policy=prr_ext.Threshold(tau=0.5))
    assert model.calls[0] == {"attention_mask": (2, 1, P + G, P + G), "position_ids": (2, P + G)}


def test_masked_lm_position_ids_skip_left_pads():
    seen = {}

    class Model:
        config = None

        def forward(self, input_ids, attention_mask=None, position_ids=None):
            seen.update(attention_mask=attention_mask, position_ids=position_ids)
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 4))

        __call__ = forward

    am = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    MaskedLMCall(Model())(torch.zeros(2, 5, dtype=torch.long), attention_mask=am)
    assert seen["position_ids"].tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert torch.equal(seen["attention_mask"], am)


def test_adapters_pass_hidden_states_through():
    """output_hidden_states=True: the adapters return logits and the last layer's hidden states, Dream's shifted like
    its logits (position j gets the state that predicts it); a model without hidden states is a clear error."""
    raw, h0, h1 = torch.randn(2, 5, 12), torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    seen = {}

    def model(*args, **kw):
        seen.update(kw)
        return SimpleNamespace(logits=raw, hidden_states=(h0, h1))
    x = torch.zeros(2, 5, dtype=torch.long)
    out = DreamShiftedLogits(model)(x, output_hidden_states=True)
    assert seen["output_hidden_states"] is True
    assert torch.equal(out.logits[:, 1:], raw[:, :-1]) and torch.equal(out.hidden_states[:, 1:], h1[:, :-1])
    assert torch.equal(out.hidden_states[:, 0], h1[:, 0])
    model.forward = model
    out = MaskedLMCall(model)(x, attention_mask=torch.ones(2, 5, dtype=torch.long), output_hidden_states=True)
    assert torch.equal(out.logits, raw) and torch.equal(out.hidden_states, h1)
    assert torch.equal(MaskedLMCall(model)(x), raw)  # without the flag: the logits, as before
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        MaskedLMCall(lambda **kw: SimpleNamespace(logits=raw))(x, output_hidden_states=True)


def test_hidden_features_on_a_transformers_masked_lm(decoders):
    """PRR with hidden-state features decodes through a real transformers masked LM (BERT) via prr_ext.load's
    adapter (test_hidden_features.py checks generate against a hand-written loop on the testbed model)."""
    dec = decoders["masked_lm"]
    x = torch.randint(5, 20, (2, 6))
    hidden = dec.call(x, output_hidden_states=True).hidden_states
    hf = prr_ext.HiddenFeatures.fit(hidden.reshape(-1, hidden.shape[-1]), 3)
    policy = prr_ext.PRR(prr_ext.Controller.init(0, extra_features=3), tau=0.8)
    res = dec.generate(["one two", "three"], gen_length=8, policy=policy, hidden_features=hf)
    assert len(res) == 2 and all(r.nfe >= 1 for r in res)
    with pytest.raises(ValueError, match="hidden_features"):
        dec.generate(["one two"], gen_length=8, policy=policy)  # the controller needs its map


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------
def test_missing_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        prr_ext.load(missing)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        prr_ext.load(tmp_path)


def test_unknown_kind(tmp_path, model_dirs):
    with pytest.raises(ValueError, match="kind must be one of"):
        prr_ext.load(model_dirs["testbed"], kind="gpt")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "my_causal_lm"}))
    with pytest.raises(ValueError, match="cannot tell what kind"):
        prr_ext.load(tmp_path)


def test_remote_code_needs_trust(model_dirs):
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        prr_ext.load(model_dirs["llada"])


def test_no_mask_token(tmp_path):
    pytest.importorskip("transformers")
    write_bert(tmp_path, mask=None)
    with pytest.raises(ValueError, match="no mask token"):
        prr_ext.load(tmp_path)


def test_tokenizer_does_not_match_the_model(tmp_path):
    pytest.importorskip("transformers")
    write_bert(tmp_path, vocab_size=len(BERT_SPECIALS) + len(WORDS), extra_words=5)
    with pytest.raises(ValueError, match="does not belong to this model"):
        prr_ext.load(tmp_path)


def test_bad_prompts(decoders):
    dec = decoders["llada"]
    with pytest.raises(TypeError, match="prompt 0 must be a string or a chat"):
        dec.generate([123], gen_length=8)
    with pytest.raises(ValueError, match="batch_size"):
        dec.generate(["hello"], gen_length=8, batch_size=0)
    with pytest.raises(ValueError, match="encodes to no tokens"):
        dec.generate([""], gen_length=8)


def test_imports_without_transformers():
    """prr_ext (and loading a testbed model) works where transformers is not installed."""
    code = textwrap.dedent("""
        import sys
        sys.modules["transformers"] = None   # any import of it raises ImportError
        import prr_ext, prr_testbed
        dec = prr_ext.load(prr_testbed.MODEL_DIR)
        print(dec.kind, "transformers" in sys.modules and sys.modules["transformers"] is not None)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["testbed", "False"]


def test_malformed_chat_names_the_prompt_and_message(decoders):
    """A malformed chat says which prompt and which message is wrong, and what is wrong with it."""
    dec = decoders["masked_lm"]
    ok = {"role": "user", "content": "the cat"}
    for prompts, error, match in (
            ([{"role": "user"}], ValueError, r"prompt 0, message 0 has no 'content'"),
            (["the cat", [ok, {"content": "sat"}]], ValueError, r"prompt 1, message 1 has no 'role'"),
            ([[{"role": "user", "content": 5}]], TypeError,
             r"prompt 0, message 0: 'content' must be a string, got int"),
            (["hello", [ok, "sat"]], TypeError, r"prompt 1, message 1 must be a dict"),
            ([[]], ValueError, r"prompt 0 is an empty chat"),
            (["hello", ("the", "cat")], TypeError, r"prompt 1 must be a string or a chat .* got tuple")):
        with pytest.raises(error, match=match):
            dec.generate(prompts, gen_length=4)
    with pytest.raises(ValueError, match=r"the prompt, message 0 has no 'content'"):
        dec.encode_prompt([{"role": "user"}])


def test_prompts_must_be_a_list(decoders):
    """A dict (one message, or a JSONL record), bytes, a set or None is refused instead of decoding its keys,
    bytes or members; any ordered iterable of prompts still works."""
    dec = decoders["masked_lm"]
    for bad in ({"prompt": "the cat", "answer": "mat"}, {"role": "user", "content": "the cat"}, b"the cat",
                bytearray(b"the cat"), {"the cat"}, None, 5):
        with pytest.raises(TypeError, match=r"prompts must be a list of strings or a list of chats.*\[message\]"):
            dec.generate(bad, gen_length=4)
    as_list = dec.generate(PROMPTS[:2], gen_length=4)
    for same in (tuple(PROMPTS[:2]), (p for p in PROMPTS[:2])):
        assert [r.tokens.tolist() for r in dec.generate(same, gen_length=4)] == [r.tokens.tolist() for r in as_list]


def test_chat_must_be_a_bool(decoders):
    """chat="no" (a truthy string) would apply the chat template: only True / False are accepted."""
    dec = decoders["masked_lm"]
    for bad in ("no", "False", 1, None):
        with pytest.raises(TypeError, match="chat must be True or False"):
            dec.generate(["the cat"], gen_length=4, chat=bad)
        with pytest.raises(TypeError, match="chat must be True or False"):
            dec.encode_prompt("the cat", chat=bad)
    with pytest.raises(TypeError, match="chat must be True or False"):
        dec.generate([], chat="no")
    assert dec.encode_prompt("the cat", chat=False) == dec.tokenizer("the cat")["input_ids"]


def test_gen_length_must_be_an_int_or_auto(decoders):
    dec = decoders["testbed"]
    for bad in (24.0, "24", 0, -8, True, None):
        with pytest.raises(ValueError, match=r"gen_length must be a positive int or 'auto', got "):
            dec.generate(["4821+7395="], gen_length=bad)
    with pytest.raises(ValueError, match=r"steps= is required with gen_length='auto'"):
        dec.generate(["4821+7395="], gen_length="auto")


def test_reserved_keywords_are_refused(decoders):
    """The keywords the Decoder sets itself, and block_info=True (its model call takes no block keywords), are
    refused with a message instead of a raw Python / model error."""
    dec = decoders["masked_lm"]
    for key in ("attention_mask", "prompt_ids", "model"):
        with pytest.raises(TypeError, match=f"{key}= is set by Decoder.generate.*prr_ext.generate"):
            dec.generate(["the cat"], gen_length=4, **{key: None})
    with pytest.raises(ValueError, match=r"block_info=True needs a KV-cache model"):
        dec.generate(["the cat"], gen_length=4, block_info=True)
    plain = dec.generate(PROMPTS[:2], gen_length=4)
    off = dec.generate(PROMPTS[:2], gen_length=4, block_info=False)
    assert [r.tokens.tolist() for r in off] == [r.tokens.tolist() for r in plain]


def test_eos_and_eot_overrides_cut_the_text(decoders):
    """eos_id= / eot_id= passed to generate end the text and set `finished` as they do in the loop."""
    dec = decoders["testbed"]
    kw = dict(gen_length=24, block_length=12, policy=prr_ext.Threshold(tau=0.9))
    base = dec.generate(["4821+7395="], **kw)[0]
    assert base.text == "c:1110 s:12216" and base.finished
    colon = dec.tokenizer.encode(":")[0]
    for key in ("eos_id", "eot_id"):
        r = dec.generate(["4821+7395="], **kw, **{key: colon})[0]
        assert torch.equal(r.tokens, base.tokens)  # without the EOS flags the id changes no token
        assert (r.text, r.finished) == ("c", True)
    # the response starts with "c": as the EOS it ends the text at once (eos_fill fills the row's tail with it)
    c = dec.tokenizer.encode("c")[0]
    r = dec.generate(["4821+7395="], **kw, eos_id=c, eos_fill=True)[0]
    assert r.tokens[0] == c and (r.tokens[-6:] == c).all() and (r.text, r.finished) == ("", True)
    # None keeps the Decoder's ids
    r = dec.generate(["4821+7395="], **kw, eos_id=None, eot_id=None)[0]
    assert torch.equal(r.tokens, base.tokens) and (r.text, r.finished) == (base.text, base.finished)
    for key, bad in (("eos_id", "c"), ("eot_id", -1), ("eos_id", 1.0), ("eot_id", True)):
        with pytest.raises(ValueError, match=f"{key} must be a non-negative int"):
            dec.generate(["4821+7395="], **kw, **{key: bad})

    # a transformers model: a token of the default response, drawn at random, becomes the EoT
    dec = decoders["masked_lm"]
    g = torch.Generator().manual_seed(11)
    base = dec.generate(PROMPTS, gen_length=8, block_length=4)
    for r in base:
        tokens = r.tokens.tolist()
        stop = tokens[int(torch.randint(1, len(tokens), (1,), generator=g))]
        out = dec.generate([PROMPTS[base.index(r)]], gen_length=8, block_length=4, eot_id=stop)[0]
        assert torch.equal(out.tokens, r.tokens)
        end = next(i for i, t in enumerate(tokens) if t in (dec.ids.eos, stop))
        assert (out.text, out.finished) == (dec.tokenizer.decode(tokens[:end], skip_special_tokens=True), True)


def test_masked_lm_canvas_must_fit_the_positions(decoders):
    """A BERT-style model has config.max_position_embeddings positions: a longer canvas is a ValueError naming
    gen_length and the limit, before any batch decodes."""
    dec = decoders["masked_lm"]
    limit = dec.model.config.max_position_embeddings
    long_prompt = "the cat sat on"
    P = len(dec.encode_prompt(long_prompt))
    assert limit == 64 and P == 4
    calls = []
    counted = Decoder(dec.model, dec.tokenizer, kind="masked_lm", ids=dec.ids, device="cpu")
    counted.call = lambda *a, **k: calls.append(1) or dec.call(*a, **k)
    with pytest.raises(ValueError, match=rf"gen_length={limit - P + 4} after prompt 1 \({P} tokens\).*{limit} "
                                         rf"positions \(config.max_position_embeddings\): "
                                         rf"pass gen_length <= {limit - P}"):
        counted.generate(["the", long_prompt], gen_length=limit - P + 4, block_length=limit - P + 4, batch_size=1)
    assert calls == []
    r = counted.generate(["the", long_prompt], gen_length=limit - P, block_length=(limit - P) // 3, steps=6)
    assert len(r) == 2 and all(x.tokens.shape == (limit - P,) for x in r) and calls


def test_seed_per_prompt_over_batches(decoders):
    """One seed per prompt: each batch gets its prompts' seeds, as if every batch ran on its own."""
    dec = decoders["llada"]
    g = torch.Generator().manual_seed(5)
    prompts = PROMPTS[:3]
    seed = torch.randint(0, 2 ** 62, (3,), generator=g)
    kw = dict(gen_length=8, block_length=4, temperature=1.0)
    batched = dec.generate(prompts, seed=seed, batch_size=2, **kw)
    alone = dec.generate(prompts[:2], seed=seed[:2], **kw) + dec.generate(prompts[2:], seed=seed[2:], **kw)
    assert [r.tokens.tolist() for r in batched] == [r.tokens.tolist() for r in alone]
    other = dec.generate(prompts[2:], seed=seed[:1], **kw)[0]
    assert not torch.equal(other.tokens, batched[2].tokens)  # the seeds matter: the third prompt got its own
    for bad, got in ((seed[:2], r"shape \(2,\)"), (7, "int"), (seed[None], r"shape \(1, 3\)")):
        with pytest.raises(ValueError, match=rf"seed must hold one entry per prompt, a \[3\] tensor.*"
                                             rf"batch_size=2.*got {got}"):
            dec.generate(prompts, seed=bad, batch_size=2, **kw)


def test_trust_remote_code_must_be_a_bool(model_dirs, tmp_path):
    """trust_remote_code="false" (from a CLI flag or a config file) must not count as consent to run the
    directory's code; the check comes before anything is read."""
    for bad in ("false", "no", "True", 1, 0, None):
        with pytest.raises(TypeError, match="trust_remote_code must be True or False"):
            prr_ext.load(model_dirs["llada"], trust_remote_code=bad)
    with pytest.raises(TypeError, match="trust_remote_code"):
        prr_ext.load(tmp_path / "no_such_model", trust_remote_code="false")


def test_forced_kind_must_match_config(model_dirs, decoders, tmp_path):
    """kind= that contradicts the kind config.json describes is a ValueError naming both; it still forces a kind
    that config.json does not identify."""
    for kind_dir, forced in (("dream", "llada"), ("llada", "dream"), ("masked_lm", "dream"), ("testbed", "masked_lm"),
                             ("llada", "testbed")):
        with pytest.raises(ValueError, match=rf"kind='{forced}' contradicts .*a '{kind_dir}' model"):
            prr_ext.load(model_dirs[kind_dir], kind=forced, trust_remote_code=True)
    assert prr_ext.load(model_dirs["masked_lm"], kind="masked_lm").kind == "masked_lm"
    d = tmp_path / "unidentified"
    shutil.copytree(model_dirs["llada"], d)
    with open(d / "config.json") as f:
        config = json.load(f)
    config.update(model_type="tinydiff", architectures=["TinyDiffModel"])
    with open(d / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="cannot tell what kind"):
        prr_ext.load(d, trust_remote_code=True)
    dec = prr_ext.load(d, kind="llada", trust_remote_code=True)
    ref = decoders["llada"].generate(PROMPTS[:2], gen_length=8, block_length=4)
    assert [r.tokens.tolist() for r in dec.generate(PROMPTS[:2], gen_length=8, block_length=4)] == \
        [r.tokens.tolist() for r in ref]


def test_device_and_dtype_checked_before_loading(model_dirs, tmp_path, monkeypatch):
    """A bad device or dtype is an error naming the argument before anything loads (a missing path then still
    reports the argument); dtype names work for every kind."""
    missing = tmp_path / "no_such_model"
    for device, error, match in (("gpu", ValueError, r"device must be a device torch knows.*'gpu'"),
                                 (None, TypeError, r"device must be a torch.device"),
                                 (True, TypeError, r"device must be a torch.device"),
                                 (1.5, TypeError, r"device must be a torch.device")):
        with pytest.raises(error, match=match):
            prr_ext.load(missing, device=device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='cuda', but torch sees no CUDA GPU"):
        prr_ext.load(missing, device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device='cuda:3', but torch sees 1 GPU"):
        prr_ext.load(missing, device="cuda:3")
    monkeypatch.undo()
    for dtype, error, match in (("half-ish", ValueError, r"dtype must be a torch.dtype, 'auto' or a dtype's name"),
                                ("int64", ValueError, r"dtype must be a floating-point dtype"),
                                (torch.int8, ValueError, r"dtype must be a floating-point dtype"),
                                (5, TypeError, r"dtype must be a torch.dtype"),
                                ({"": torch.float16}, TypeError, r"dtype must be a torch.dtype")):
        with pytest.raises(error, match=match):
            prr_ext.load(missing, dtype=dtype)
    for kind in ("testbed", "masked_lm"):
        for dtype, expected in (("bfloat16", torch.bfloat16), ("half", torch.float16), (torch.float16, torch.float16),
                                ("auto", torch.float32)):
            dec = prr_ext.load(model_dirs[kind], dtype=dtype, device=torch.device("cpu"))
            assert {p.dtype for p in dec.model.parameters()} == {expected}, (kind, dtype)
            assert dec.device == torch.device("cpu")
