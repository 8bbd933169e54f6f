"""Styles and fingerprints do not depend on how the VAE was loaded (diffusers names or LDM/ComfyUI names)."""
import torch
from torch import nn

from stylemamba.vae import _fingerprint, decoder_state, load_vae
from stylemamba.vae_layout import from_ldm, ldm_names, to_ldm


def module_with_keys(state):
    """A plain module tree whose state_dict has exactly these keys (stands in for an LDM decoder's weights)."""
    root = nn.Module()
    for key, value in state.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
        node.register_parameter(leaf, nn.Parameter(value.clone()))
    return root


def test_ldm_names_reverse_the_decoder_levels(tiny_models):
    vae = load_vae(tiny_models["vae"])
    names = ldm_names(decoder_state(vae.decoder, vae.post_quant_conv))
    assert names["decoder.up_blocks.0.resnets.0.conv1.weight"] == "decoder.up.3.block.0.conv1.weight"
    assert names["decoder.mid_block.attentions.0.to_q.weight"] == "decoder.mid.attn_1.q.weight"
    assert names["post_quant_conv.weight"] == "post_quant_conv.weight"


def test_round_trip_and_shapes(tiny_models):
    vae = load_vae(tiny_models["vae"])
    state = decoder_state(vae.decoder, vae.post_quant_conv)
    ldm = to_ldm(state)
    assert ldm["decoder.mid.attn_1.q.weight"].dim() == 4
    back = from_ldm(ldm, state)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    assert from_ldm(ldm, ldm).keys() == ldm.keys()  # an LDM-named target is served as is


def test_fingerprint_is_the_same_in_both_layouts(tiny_models):
    vae = load_vae(tiny_models["vae"])
    ldm = to_ldm(decoder_state(vae.decoder, vae.post_quant_conv))
    tree = module_with_keys({k[len("decoder."):]: v for k, v in ldm.items() if k.startswith("decoder.")})
    pqc = module_with_keys({k[len("post_quant_conv."):]: v for k, v in ldm.items() if k.startswith("post_quant_conv.")})
    assert _fingerprint(tree, pqc) == vae.identity
