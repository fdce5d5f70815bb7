"""ChatGLM2 original layout -> native glm: a clean-room reference forward (written here from the architecture spec,
not from the checkpoint's code) against the converted GlmForCausalLM; mutations of the conversion that the parity
check must catch; bit-exact round trip; refusals; caching."""
import json
import math

import pytest
import torch

from tunekit.convert.chatglm2 import ConversionError, convert, from_glm, load_weights, reverse, to_glm
from tunekit.tiny.chatglm2 import build_original

TOL = 1e-5


# ------------------------------------------------------------------------------------- clean-room reference forward
def reference_logits(sd: dict, cfg: dict, input_ids: torch.Tensor) -> torch.Tensor:
    """ChatGLM2 forward in fp32 from the spec: RMSNorm pre-norm blocks; fused [Q|K|V] projection with bias; rotary on
    the first kv_channels/2 dims of each head as interleaved pairs (2i, 2i+1), base 10000; K/V groups each serving
    heads/groups consecutive heads; causal softmax(QK^T/sqrt(d)); SwiGLU silu(first half) * second half; untied head."""
    sd = {k: v.float() for k, v in sd.items()}
    heads, groups, d = cfg["num_attention_heads"], cfg["multi_query_group_num"], cfg["kv_channels"]
    eps, rot = cfg["layernorm_epsilon"], cfg["kv_channels"] // 2
    h = sd["transformer.embedding.word_embeddings.weight"][input_ids]
    b, s, _ = h.shape
    angles = torch.arange(s, dtype=torch.float32)[:, None] / 10000 ** (torch.arange(0, rot, 2).float() / rot)
    cos, sin = angles.cos()[None, :, None], angles.sin()[None, :, None]

    def rope(x):  # [b, s, n, d]
        x0, x1 = x[..., :rot:2], x[..., 1:rot:2]
        rotated = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(-2)
        return torch.cat([rotated, x[..., rot:]], dim=-1)

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    causal = torch.ones(s, s, dtype=torch.bool).triu(1)
    for n in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{n}."
        x = rms(h, sd[p + "input_layernorm.weight"])
        qkv = x @ sd[p + "self_attention.query_key_value.weight"].T + sd[p + "self_attention.query_key_value.bias"]
        q, k, v = qkv.split([heads * d, groups * d, groups * d], dim=-1)
        q, k, v = q.view(b, s, heads, d), k.view(b, s, groups, d), v.view(b, s, groups, d)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(heads // groups, dim=2), v.repeat_interleave(heads // groups, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
        attn = scores.masked_fill(causal, float("-inf")).softmax(-1)
        ctx = torch.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, s, heads * d)
        h = h + ctx @ sd[p + "self_attention.dense.weight"].T
        x = rms(h, sd[p + "post_attention_layernorm.weight"])
        gate, up = (x @ sd[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)
        h = h + (torch.nn.functional.silu(gate) * up) @ sd[p + "mlp.dense_4h_to_h.weight"].T
    h = rms(h, sd["transformer.encoder.final_layernorm.weight"])
    return h @ sd["transformer.output_layer.weight"].T


# ------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def original(tmp_path_factory):
    return build_original(tmp_path_factory.mktemp("chatglm2") / "original")


@pytest.fixture(scope="module")
def converted(original, tmp_path_factory):
    return convert(original, tmp_path_factory.mktemp("chatglm2") / "native")


def batch(cfg, seed=1, b=3, s=13):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, cfg["padded_vocab_size"], (b, s), generator=g)


def glm_model(config_dir, state=None):
    from transformers import AutoConfig, GlmForCausalLM

    if state is None:
        return GlmForCausalLM.from_pretrained(config_dir, dtype=torch.float32, attn_implementation="eager").eval()
    model = GlmForCausalLM(AutoConfig.from_pretrained(config_dir)).float().eval()
    model.load_state_dict(state, strict=True)
    return model


# ------------------------------------------------------------------------------------------------------- parity
def test_tiny_original_has_the_chatglm2_layout(original):
    cfg = json.loads((original / "config.json").read_text())
    sd = load_weights(original)
    assert cfg["model_type"] == "chatglm" and cfg["multi_query_attention"] and cfg["multi_query_group_num"] == 2
    qkv = sd["transformer.encoder.layers.0.self_attention.query_key_value.weight"]
    assert qkv.shape == ((cfg["num_attention_heads"] + 2 * 2) * cfg["kv_channels"], cfg["hidden_size"])
    assert "transformer.rotary_pos_emb.inv_freq" in sd and not list(original.glob("*.py"))  # no code at all


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_converted_glm_matches_reference_forward(original, converted, attn):
    from transformers import GlmForCausalLM

    cfg = json.loads((original / "config.json").read_text())
    ids = batch(cfg)
    want = reference_logits(load_weights(original), cfg, ids)
    model = GlmForCausalLM.from_pretrained(converted, dtype=torch.float32, attn_implementation=attn).eval()
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert want.abs().max() > 1  # logits of a real scale, so 1e-5 is a strict bound
    assert (got - want).abs().max().item() < TOL


def test_padded_batch_matches_reference_per_sample(original, converted):
    """Right padding with an attention mask leaves each real sample's logits as the reference computes them alone."""
    cfg = json.loads((original / "config.json").read_text())
    sd, model = load_weights(original), glm_model(converted)
    ids = batch(cfg, seed=2, b=2, s=11)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
    assert (got[0] - reference_logits(sd, cfg, ids[:1])[0]).abs().max() < TOL
    assert (got[1, :7] - reference_logits(sd, cfg, ids[1:, :7])[0]).abs().max() < TOL


def _mutate(native: dict, cfg: dict, mutation: str) -> dict:
    """A conversion bug, applied to the converter's output."""
    out = dict(native)
    heads, groups, d = cfg["num_attention_heads"], cfg["multi_query_group_num"], cfg["kv_channels"]
    q, kv, rot = heads * d, groups * d, d // 2
    for n in range(cfg["num_layers"]):
        p = f"model.layers.{n}."
        if mutation == "qk_swapped":  # fused rows read as [K | Q | V] instead of [Q | K | V]
            for kind in ("weight", "bias"):
                fused = torch.cat([native[p + f"self_attn.{x}_proj.{kind}"] for x in "qkv"])
                out[p + f"self_attn.k_proj.{kind}"] = fused[:kv]
                out[p + f"self_attn.q_proj.{kind}"] = fused[kv:kv + q]
        elif mutation == "rotary_not_interleaved":  # rows permuted from pairs (2i, 2i+1) to halves, as for NeoX/Llama
            perm = torch.cat([torch.arange(0, rot, 2), torch.arange(1, rot, 2), torch.arange(rot, d)])
            for name, n_heads in (("q_proj", heads), ("k_proj", groups)):
                for kind in ("weight", "bias"):
                    t = native[p + f"self_attn.{name}.{kind}"]
                    out[p + f"self_attn.{name}.{kind}"] = t.view(n_heads, d, -1)[:, perm].reshape(t.shape)
        elif mutation == "gate_up_swapped":
            gate, up = native[p + "mlp.gate_up_proj.weight"].chunk(2)
            out[p + "mlp.gate_up_proj.weight"] = torch.cat([up, gate])
    return out


@pytest.mark.parametrize("mutation", ["none", "qk_swapped", "rotary_not_interleaved", "gate_up_swapped"])
def test_parity_check_catches_conversion_bugs(original, converted, mutation):
    """The parity test above must be able to fail: each mutation of the mapping breaks the 1e-5 agreement."""
    cfg = json.loads((original / "config.json").read_text())
    sd = load_weights(original)
    native, _ = to_glm(sd, cfg)
    ids = batch(cfg, seed=3)
    want = reference_logits(sd, cfg, ids)
    with torch.no_grad():
        got = glm_model(converted, _mutate(native, cfg, mutation))(input_ids=ids).logits
    diff = (got - want).abs().max().item()
    if mutation == "none":
        assert diff < TOL
    else:
        assert diff > 1e-2, f"{mutation} went unnoticed (max |diff| {diff:.2e})"


# -------------------------------------------------------------------------------------------- round trip, formats
def test_forth_and_back_is_bit_exact(original, converted, tmp_path):
    back = reverse(converted, tmp_path / "back", original=converted)
    a, b = load_weights(original), load_weights(back)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert json.loads((back / "config.json").read_text()) == json.loads((original / "config.json").read_text())
    assert (back / "tokenizer.model").read_bytes() == (original / "tokenizer.model").read_bytes()
    # without the original folder the config is rebuilt from the native one, weights still exact
    rebuilt = reverse(converted, tmp_path / "rebuilt")
    c = load_weights(rebuilt)
    assert all(torch.equal(a[k], c[k]) for k in a)
    cfg = json.loads((rebuilt / "config.json").read_text())
    orig_cfg = json.loads((original / "config.json").read_text())
    assert {k: cfg[k] for k in orig_cfg if k not in ("_name_or_path", "transformers_version")} == \
           {k: v for k, v in orig_cfg.items() if k not in ("_name_or_path", "transformers_version")}


def test_bf16_round_trip_and_pickled_shards(tmp_path):
    """THUDM ships pickled .bin shards in half precision: the dtype found is kept, both ways, bit for bit."""
    src = build_original(tmp_path / "bin", fmt="bin", seed=5)
    cfg = json.loads((src / "config.json").read_text())
    sd = {k: v.to(torch.bfloat16) for k, v in load_weights(src).items()}
    native, freq = to_glm(sd, cfg)
    assert all(t.dtype == torch.bfloat16 for t in native.values())
    back = from_glm(native, cfg, freq)
    assert sorted(back) == sorted(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    out = convert(src, tmp_path / "bin-native")
    assert json.loads((out / "config.json").read_text())["model_type"] == "glm"


def test_conversion_is_cached_and_atomic(original, converted):
    weights = converted / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert convert(original, converted) == converted
    assert weights.stat().st_mtime_ns == before
    assert not [p for p in converted.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    record = json.loads((converted / "tunekit_conversion.json").read_text())
    assert record["variant"] == "chatglm2" and record["fast_tokenizer"]


def test_glm_config_mapping(converted):
    cfg = json.loads((converted / "config.json").read_text())
    assert cfg["model_type"] == "glm" and cfg["num_key_value_heads"] == 2 and cfg["head_dim"] == 16
    assert cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    assert (cfg["pad_token_id"], cfg["eos_token_id"], cfg["bos_token_id"]) == (0, 2, None)
    assert cfg["rms_norm_eps"] == 1e-5 and cfg["attention_bias"] is True and cfg["tie_word_embeddings"] is False


@pytest.mark.parametrize("change,message", [
    ({"pre_seq_len": 128}, "P-tuning"),
    ({"quantization_bit": 4}, "int4/int8"),
    ({"rope_ratio": 16}, "RoPE-scaled"),
    ({"rmsnorm": False}, "LayerNorm"),
    ({"original_rope": False}, "NeoX"),
    ({"add_bias_linear": True}, "biases"),
    ({"position_encoding_2d": True}, r"ChatGLM-6B \(v1"),
    ({"model_type": "glm"}, "already 'glm'"),
])
def test_refusals_say_why(original, tmp_path, change, message):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(original, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(change)
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match=message) as e:
        convert(src, tmp_path / "out")
    assert "config.json" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_prefix_encoder_tensors_are_refused(original):
    cfg = json.loads((original / "config.json").read_text())
    sd = load_weights(original)
    sd["transformer.prefix_encoder.embedding.weight"] = torch.zeros(4, 8)
    with pytest.raises(ConversionError, match="P-tuning"):
        to_glm(sd, cfg)
