"""The CLIP vision tower every host family holds, and its config both ways: a VisionConfig into transformers'
CLIPVisionConfig (building a tower, writing the `vision_tower/config.json` a checkpoint carries) and a CLIP
config.json (or an authors' `mm_vision_tower` name) into a VisionConfig's dims. Family-neutral: the front-end
modules and the generic checkpoint IO (models/checkpoints.py) both read it."""

from __future__ import annotations

from .config import VisionConfig

# The towers the authors' config.json names by hub id (`mm_vision_tower`), with their dims.
KNOWN_CLIP_TOWERS = {
    "openai/clip-vit-large-patch14-336": dict(image_size=336, patch_size=14, hidden_size=1024, num_layers=24,
                                              num_heads=16, intermediate_size=4096),
    "openai/clip-vit-large-patch14": dict(image_size=224, patch_size=14, hidden_size=1024, num_layers=24,
                                          num_heads=16, intermediate_size=4096),
}


def clip_vision_config(vision: VisionConfig):
    """transformers' CLIPVisionConfig of `vision`'s tower (quick_gelu, as OpenAI's CLIP)."""
    from transformers import CLIPVisionConfig  # here: the checkpoint IO imports this module without a model

    return CLIPVisionConfig(
        hidden_size=vision.hidden_size,
        intermediate_size=vision.intermediate_size,
        num_hidden_layers=vision.num_layers,
        num_attention_heads=vision.num_heads,
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        projection_dim=vision.hidden_size,
        hidden_act="quick_gelu",
    )


def clip_dims(conf: dict) -> dict:
    """A CLIP config.json (a CLIPVisionConfig's, or a CLIPConfig's with `vision_config`, as llava-hf nests it) as
    VisionConfig fields; a KeyError names a missing key."""
    conf = conf.get("vision_config", conf)
    return dict(image_size=conf["image_size"], patch_size=conf["patch_size"], hidden_size=conf["hidden_size"],
                num_layers=conf["num_hidden_layers"], num_heads=conf["num_attention_heads"],
                intermediate_size=conf["intermediate_size"])


def clip_hidden_state(tower, pixel_values, select_layer: int):
    """`tower`'s hidden state `select_layer` as `output_hidden_states=True` numbers them (0: the embeddings after
    pre_layrnorm, i: layer i's output; negative: from the end), without running the layers after it. The hosts
    read the penultimate layer (-2): a full forward's last layer is work thrown away (a quarter of the CPU-scale
    towers' forward, 1/24 of CLIP-L's). The same layers on the same inputs: equal, bit for bit, to indexing a
    full forward's hidden_states (a test checks it)."""
    clip = getattr(tower, "vision_model", tower)  # flat in transformers 5
    layers = clip.encoder.layers
    if not -len(layers) - 1 <= select_layer <= len(layers):
        raise IndexError(f"vision.select_layer {select_layer}: the tower has {len(layers)} layers, so "
                         f"{len(layers) + 1} hidden states")
    hidden = clip.pre_layrnorm(clip.embeddings(pixel_values))
    for layer in layers[:select_layer % (len(layers) + 1)]:
        hidden = layer(hidden, None)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return hidden
